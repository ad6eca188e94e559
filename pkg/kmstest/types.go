package kmstest

import "github.com/kms-key-sync/kms-key-sync/internal/kms"

// The types below are the operator's own KMS types under names a program outside this module
// can use: a kmstest.Key is the key the operator's client decodes, field for field.

// Key is one KMS master key as the emulator stores and serves it. In a ListKmsByTags answer,
// ID is resource_id and key_id, Alias is resource_name and key_alias, Tags is tags, and in
// resource_detail Description is key_description, DomainID domain_id, Realm realm, Spec
// key_spec, Usage key_usage, Origin origin, Type key_type, State key_state, Default
// default_key_flag, RotationEnabled key_rotation_enabled, EnterpriseProjectID
// sys_enterprise_project_id, and CreationDate, ScheduledDeletionDate and ExpirationTime are
// creation_date, scheduled_deletion_date and expiration_time (a zero date is sent as "").
// FillDefaults completes a key that sets only some fields.
type Key = kms.Key

// State is a key's key_state. Its String method returns the names ParseState reads.
type State = kms.State

// The documented key states. StateUnknown (0) stands for anything else; FillDefaults turns it
// into StateEnabled.
const (
	StateUnknown           = kms.StateUnknown
	StatePendingActivation = kms.StatePendingActivation
	StateEnabled           = kms.StateEnabled
	StateDisabled          = kms.StateDisabled
	StatePendingDeletion   = kms.StatePendingDeletion
	StatePendingImport     = kms.StatePendingImport
)

// TagFilter is one entry of a request's tags, as recorded in RequestRecord.Tags: keys carrying
// Key with one of Values (any value when Values is empty).
type TagFilter = kms.TagFilter

// Match is one entry of a request's matches, as recorded in RequestRecord.Matches.
type Match = kms.Match

// MatchKey names the key field a Match searches.
type MatchKey = kms.MatchKey

// MatchResourceName searches the key alias; it is the only match key the API accepts.
const MatchResourceName = kms.MatchResourceName

// The request limits the emulator enforces; a request beyond them gets 400 KMS.0206.
const (
	// MaxTags is the most tag keys one request may name.
	MaxTags = kms.MaxTags
	// MaxTagKeyLength is the most Unicode characters in a tag key.
	MaxTagKeyLength = kms.MaxTagKeyLength
	// MaxTagValueLength is the most Unicode characters in a tag value.
	MaxTagValueLength = kms.MaxTagValueLength
	// MaxMatchValueLength is the most Unicode characters in a match value.
	MaxMatchValueLength = kms.MaxMatchValueLength
	// MaxPageSize is the largest limit of a filter request.
	MaxPageSize = kms.MaxPageSize
	// ForbiddenTagChars are the printable characters a tag key or value must not contain;
	// ASCII control characters 0-31 are forbidden as well.
	ForbiddenTagChars = kms.ForbiddenTagChars
)
