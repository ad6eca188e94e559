package render

import "fmt"

// SpecError says that an expression cannot run as written: it does not compile, or its
// estimated cost is above the budget. Only a change of the spec helps.
type SpecError struct {
	// Field names the entry, such as spec.target.data["keys.env"].
	Field string
	Err   error
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *SpecError) Unwrap() error { return e.Err }

// ExpressionError says that an expression failed on the keys listed: it ran over the budget or
// the deadline, byAlias found no key, or its result could not be written.
type ExpressionError struct {
	// Field names the entry, or spec.target.data when the failure is the expressions' together.
	Field string
	Err   error
}

func (e *ExpressionError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *ExpressionError) Unwrap() error { return e.Err }

// TooLargeError says that the content does not fit in a ConfigMap, even with keys.json
// compressed.
type TooLargeError struct {
	Keys, Size, StoredSize int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%d keys need %d bytes of data (%d stored) even with keys.json compressed, more than a ConfigMap can hold (%d, %d stored); narrow spec.tags or spec.matches",
		e.Keys, e.Size, e.StoredSize, MaxDataBytes, MaxStoredBytes)
}

// KeyIDError says that KMS answered a key ID that cannot be a ConfigMap key.
type KeyIDError struct {
	ID string
}

func (e *KeyIDError) Error() string { return fmt.Sprintf("key id %q cannot be a ConfigMap key", e.ID) }
