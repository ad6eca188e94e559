package kmstest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

// The values FillDefaults gives to empty fields.
const (
	DefaultDomainID            = "6f1e2d3c4b5a49687766554433221100"
	DefaultRealm               = "emulator-1"
	DefaultSpec                = "AES_256"
	DefaultUsage               = "ENCRYPT_DECRYPT"
	DefaultOrigin              = "kms"
	DefaultType                = "1"
	DefaultEnterpriseProjectID = "0"
)

// DefaultCreationDate is the creation date FillDefaults gives to keys without one.
var DefaultCreationDate = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// KeyRecord is one key in a seed file and in the admin API. A seed file is a JSON array of
// KeyRecords:
//
//	[
//	  {"id": "0c5a...-...", "alias": "payments-db", "state": "Enabled",
//	   "tags": {"env": "prod", "team": "payments"}, "creation_date": "2024-03-01T10:00:00Z"}
//	]
//
// Only id is required. state is a name ParseState reads (case-insensitive) or a number;
// dates are RFC 3339; omitted fields get the defaults of FillDefaults. Unknown fields are
// errors, so typos do not pass silently. The fields are those of Key.
type KeyRecord struct {
	ID                    string            `json:"id"`
	Alias                 string            `json:"alias,omitempty"`
	Description           string            `json:"description,omitempty"`
	DomainID              string            `json:"domain_id,omitempty"`
	Realm                 string            `json:"realm,omitempty"`
	Spec                  string            `json:"spec,omitempty"`
	Usage                 string            `json:"usage,omitempty"`
	Origin                string            `json:"origin,omitempty"`
	Type                  string            `json:"type,omitempty"`
	State                 *KeyState         `json:"state,omitempty"`
	Default               bool              `json:"default,omitempty"`
	RotationEnabled       bool              `json:"rotation_enabled,omitempty"`
	EnterpriseProjectID   string            `json:"enterprise_project_id,omitempty"`
	CreationDate          *time.Time        `json:"creation_date,omitempty"`
	ScheduledDeletionDate *time.Time        `json:"scheduled_deletion_date,omitempty"`
	ExpirationTime        *time.Time        `json:"expiration_time,omitempty"`
	Tags                  map[string]string `json:"tags,omitempty"`
}

// KeyState is a State that reads a name ("Disabled", case-insensitive) or a number (3 or
// "3") from JSON and writes the name.
type KeyState State

// MarshalJSON writes the state's name, or its number when it has none.
func (s KeyState) MarshalJSON() ([]byte, error) {
	st := State(s)
	if st.String() == "Unknown" && st != StateUnknown {
		return []byte(strconv.Itoa(int(st))), nil
	}
	return json.Marshal(st.String())
}

// UnmarshalJSON reads a state name or number.
func (s *KeyState) UnmarshalJSON(b []byte) error {
	text := string(b)
	if unq, err := strconv.Unquote(text); err == nil {
		text = unq
	}
	st, err := ParseState(text)
	if err != nil {
		return err
	}
	*s = KeyState(st)
	return nil
}

// ParseState parses a state name (PendingActivation, Enabled, Disabled, PendingDeletion,
// PendingImport or Unknown, case-insensitive) or a non-negative number.
func ParseState(s string) (State, error) {
	s = strings.TrimSpace(s)
	for st := StatePendingActivation; st <= StatePendingImport; st++ {
		if strings.EqualFold(s, st.String()) {
			return st, nil
		}
	}
	if strings.EqualFold(s, StateUnknown.String()) {
		return StateUnknown, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return State(n), nil
	}
	return 0, fmt.Errorf("unknown key state %q: want one of %s or a number", s, strings.Join(kms.StateNames(), ", "))
}

// RecordOf converts a key to its seed-file record.
func RecordOf(k Key) KeyRecord {
	return KeyRecord{
		ID:                    k.ID,
		Alias:                 k.Alias,
		Description:           k.Description,
		DomainID:              k.DomainID,
		Realm:                 k.Realm,
		Spec:                  k.Spec,
		Usage:                 k.Usage,
		Origin:                k.Origin,
		Type:                  k.Type,
		State:                 new(KeyState(k.State)),
		Default:               k.Default,
		RotationEnabled:       k.RotationEnabled,
		EnterpriseProjectID:   k.EnterpriseProjectID,
		CreationDate:          timePtr(k.CreationDate),
		ScheduledDeletionDate: timePtr(k.ScheduledDeletionDate),
		ExpirationTime:        timePtr(k.ExpirationTime),
		Tags:                  maps.Clone(k.Tags),
	}
}

// Key converts a record to a key, without defaults (an omitted state is StateUnknown).
func (r KeyRecord) Key() Key {
	k := Key{
		ID:                    r.ID,
		Alias:                 r.Alias,
		Description:           r.Description,
		DomainID:              r.DomainID,
		Realm:                 r.Realm,
		Spec:                  r.Spec,
		Usage:                 r.Usage,
		Origin:                r.Origin,
		Type:                  r.Type,
		Default:               r.Default,
		RotationEnabled:       r.RotationEnabled,
		EnterpriseProjectID:   r.EnterpriseProjectID,
		CreationDate:          timeOf(r.CreationDate),
		ScheduledDeletionDate: timeOf(r.ScheduledDeletionDate),
		ExpirationTime:        timeOf(r.ExpirationTime),
		Tags:                  maps.Clone(r.Tags),
	}
	if r.State != nil {
		k.State = State(*r.State)
	}
	return k
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func timeOf(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// FillDefaults returns k with its empty fields set to the Default* values: state Enabled,
// spec AES_256, usage ENCRYPT_DECRYPT, origin kms, type "1", enterprise project "0", the
// default domain, realm and creation date. Tags stay as they are.
func FillDefaults(k Key) Key {
	setIfEmpty(&k.DomainID, DefaultDomainID)
	setIfEmpty(&k.Realm, DefaultRealm)
	setIfEmpty(&k.Spec, DefaultSpec)
	setIfEmpty(&k.Usage, DefaultUsage)
	setIfEmpty(&k.Origin, DefaultOrigin)
	setIfEmpty(&k.Type, DefaultType)
	setIfEmpty(&k.EnterpriseProjectID, DefaultEnterpriseProjectID)
	if k.State == StateUnknown {
		k.State = StateEnabled
	}
	if k.CreationDate.IsZero() {
		k.CreationDate = DefaultCreationDate
	}
	return k
}

func setIfEmpty(field *string, value string) {
	if *field == "" {
		*field = value
	}
}

// ReadKeys reads a seed file (a JSON array of KeyRecords) and fills defaults. Every key needs
// a distinct id.
func ReadKeys(r io.Reader) ([]Key, error) {
	var records []KeyRecord
	if err := wire.Decode(r, &records); err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	keys := make([]Key, 0, len(records))
	seen := make(map[string]bool, len(records))
	for i, rec := range records {
		if rec.ID == "" {
			return nil, fmt.Errorf("read keys: key %d has no id", i)
		}
		if seen[rec.ID] {
			return nil, fmt.Errorf("read keys: duplicate id %q", rec.ID)
		}
		seen[rec.ID] = true
		k := FillDefaults(rec.Key())
		if rec.State != nil {
			k.State = State(*rec.State) // an explicit "Unknown" stays unknown
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// ReadKeysFile reads a seed file from disk.
func ReadKeysFile(path string) ([]Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read keys file: %w", err)
	}
	keys, err := ReadKeys(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}

// WriteKeys writes keys as a seed file, sorted by id.
func WriteKeys(w io.Writer, keys []Key) error {
	records := make([]KeyRecord, len(keys))
	for i, k := range keys {
		records[i] = RecordOf(k)
	}
	slices.SortFunc(records, func(a, b KeyRecord) int { return strings.Compare(a.ID, b.ID) })
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(records); err != nil {
		return fmt.Errorf("write keys: %w", err)
	}
	return nil
}

// LoadKeys reads a seed file and stores its keys (replacing keys with the same ids).
func (e *Emulator) LoadKeys(r io.Reader) error {
	keys, err := ReadKeys(r)
	if err != nil {
		return err
	}
	return e.PutKeys(keys...)
}

// LoadKeysFile reads a seed file from disk and stores its keys.
func (e *Emulator) LoadKeysFile(path string) error {
	keys, err := ReadKeysFile(path)
	if err != nil {
		return err
	}
	return e.PutKeys(keys...)
}

// GenerateKeys returns n enabled keys carrying tags, with defaults filled. Ids are UUID-shaped
// and deterministic: a hash of tags, then the index, so they sort in index order and calls with
// different tags do not collide. Aliases are "gen-<hash>-<index>"; creation dates are one
// second apart from DefaultCreationDate.
func GenerateKeys(n int, tags map[string]string) []Key {
	h := tagsHash(tags)
	keys := make([]Key, 0, max(n, 0))
	for i := range max(n, 0) {
		keys = append(keys, FillDefaults(Key{
			ID:           fmt.Sprintf("%08x-0000-4000-8000-%012x", h, i),
			Alias:        fmt.Sprintf("gen-%08x-%06d", h, i),
			Description:  "generated key",
			CreationDate: DefaultCreationDate.Add(time.Duration(i) * time.Second),
			Tags:         maps.Clone(tags),
		}))
	}
	return keys
}

func tagsHash(tags map[string]string) uint32 {
	f := fnv.New32a()
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		_, _ = fmt.Fprintf(f, "%q=%q;", k, tags[k])
	}
	return f.Sum32()
}
