package kms

import (
	"encoding/json"
	"fmt"
	"time"
)

// Filter is one ListKmsByTags question.
//
// Semantics (docs/kms-api.md; the emulator implements the same): different tag keys are ANDed,
// the values of one key are ORed, and an empty Values list means "has the key, any value". A
// resource_name match is a case-sensitive substring of the key alias. Matches are ANDed.
type Filter struct {
	Tags    []TagFilter
	Matches []Match
}

// TagFilter selects keys that carry Key with one of Values (any value when Values is empty).
type TagFilter struct {
	Key    string
	Values []string
}

// Match searches a key field for a value.
type Match struct {
	Key   MatchKey
	Value string
}

// Key is one KMS master key as returned by ListKmsByTags, normalised.
type Key struct {
	ID                  string
	Alias               string
	Description         string
	DomainID            string
	Realm               string
	Spec                string
	Usage               string
	Origin              string
	Type                string
	State               State
	Default             bool
	RotationEnabled     bool
	EnterpriseProjectID string
	CreationDate        time.Time
	// ScheduledDeletionDate and ExpirationTime are zero when the key has none.
	ScheduledDeletionDate time.Time
	ExpirationTime        time.Time
	Tags                  map[string]string
}

// State is the key_state of a key.
type State int

// The documented key states. StateUnknown stands for anything else.
const (
	StateUnknown           State = 0
	StatePendingActivation State = 1
	StateEnabled           State = 2
	StateDisabled          State = 3
	StatePendingDeletion   State = 4
	StatePendingImport     State = 5
)

var stateNames = map[State]string{
	StatePendingActivation: "PendingActivation",
	StateEnabled:           "Enabled",
	StateDisabled:          "Disabled",
	StatePendingDeletion:   "PendingDeletion",
	StatePendingImport:     "PendingImport",
}

// StateNames lists every state name in the order of the API's codes, Unknown last.
func StateNames() []string {
	return []string{"PendingActivation", "Enabled", "Disabled", "PendingDeletion", "PendingImport", "Unknown"}
}

// String returns the state's name, as written into ConfigMaps and status.
func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return "Unknown"
}

// Credentials authenticate requests: either AccessKey and SecretKey (with SecurityToken for
// temporary credentials), or an IAM Token. Its formatting methods never print a secret.
type Credentials struct {
	AccessKey     string
	SecretKey     string
	SecurityToken string
	Token         string
}

// String never prints a secret; it tells only which kind of credentials these are.
func (c Credentials) String() string {
	switch {
	case c.Token != "":
		return "token(redacted)"
	case c.AccessKey != "" || c.SecretKey != "":
		return "aksk(redacted)"
	default:
		return "none"
	}
}

// GoString keeps %#v from printing secrets.
func (c Credentials) GoString() string { return c.String() }

// Format keeps every verb, %v, %+v and %#v included, from printing secrets.
func (c Credentials) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// MarshalLog keeps structured loggers (logr) from printing secrets.
func (c Credentials) MarshalLog() any { return c.String() }

// MarshalJSON keeps JSON encoders, such as zap's for a struct that holds credentials, from
// printing secrets.
func (c Credentials) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }
