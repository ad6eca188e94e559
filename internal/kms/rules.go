package kms

// The limits of ListKmsByTags, as docs/kms-api.md states them. They are defined here once: the
// client's validation and the emulator use them directly, and a test keeps the CRD schema
// markers of api/v1alpha1 in step with them.
const (
	// MaxTags is the most tag keys one filter may name.
	MaxTags = 10
	// MaxTagKeyLength is the most Unicode characters in a tag key.
	MaxTagKeyLength = 36
	// MaxTagValueLength is the most Unicode characters in a tag value.
	MaxTagValueLength = 43
	// MaxMatchValueLength is the most characters in a match value.
	MaxMatchValueLength = 255
	// MaxPageSize is the largest limit the API accepts, and the client's default.
	MaxPageSize = 1000
	// ForbiddenTagChars are the printable characters a tag key or value must not contain; ASCII
	// control characters 0-31 are forbidden as well.
	ForbiddenTagChars = `*<>\=`
	// ForbiddenTagCharPattern is the same rule as a regular expression that matches a forbidden
	// character, as the CRD schema's CEL rule states it.
	ForbiddenTagCharPattern = `[\x00-\x1f*<>\\=]`
)

// MatchKey names a field that a match searches.
type MatchKey string

// MatchResourceName searches the key alias. It is the only match field the API documents.
const MatchResourceName MatchKey = "resource_name"
