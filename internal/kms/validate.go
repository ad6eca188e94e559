package kms

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// FieldError is one problem with one field of a Filter. Field is a path such as
// "tags[2].values[1]" or "matches[0].value".
type FieldError struct {
	Field   string
	Message string
}

// Error returns "field: message".
func (e FieldError) Error() string { return e.Field + ": " + e.Message }

// ValidationError lists every problem found in a Filter. The API would reject such a filter
// with a 400, so the client refuses it before sending anything.
type ValidationError struct {
	Problems []FieldError
}

// Error joins every problem into one line.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Error()
	}
	return "invalid filter: " + strings.Join(parts, "; ")
}

// Validate checks the filter against the rules of ListKmsByTags (see rules.go): tag keys are
// non-empty, at most MaxTagKeyLength characters, unique, at most MaxTags of them; tag values are at
// most MaxTagValueLength characters and unique within their key; neither contains an ASCII control
// character or one of ForbiddenTagChars; match keys are MatchResourceName and match values are
// non-empty and at most MaxMatchValueLength characters. Every text must be valid UTF-8. It returns
// a *ValidationError naming every offending field, or nil.
func (f Filter) Validate() error {
	var v validator
	if len(f.Tags) > MaxTags {
		v.add("tags", "must name at most %d keys, got %d", MaxTags, len(f.Tags))
	}
	firstKey := make(map[string]int, len(f.Tags))
	for i, t := range f.Tags {
		path := fmt.Sprintf("tags[%d]", i)
		v.tagText(path+".key", t.Key, MaxTagKeyLength, false)
		if j, dup := firstKey[t.Key]; dup && t.Key != "" {
			v.add(path+".key", "duplicate key %q (also tags[%d])", t.Key, j)
		} else {
			firstKey[t.Key] = i
		}
		v.tagValues(path, t.Values)
	}
	for i, m := range f.Matches {
		path := fmt.Sprintf("matches[%d]", i)
		if m.Key != MatchResourceName {
			v.add(path+".key", "must be %q, got %q", MatchResourceName, m.Key)
		}
		v.text(path+".value", m.Value, MaxMatchValueLength, false)
	}
	return v.err()
}

type validator struct {
	problems []FieldError
}

func (v *validator) add(field, format string, args ...any) {
	v.problems = append(v.problems, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: v.problems}
}

func (v *validator) tagValues(path string, values []string) {
	first := make(map[string]int, len(values))
	for j, val := range values {
		field := fmt.Sprintf("%s.values[%d]", path, j)
		v.tagText(field, val, MaxTagValueLength, true)
		if k, dup := first[val]; dup {
			v.add(field, "duplicate value %q (also values[%d])", val, k)
		} else {
			first[val] = j
		}
	}
}

// text checks emptiness, UTF-8 validity and length in Unicode characters.
func (v *validator) text(field, s string, maxLen int, emptyOK bool) bool {
	switch {
	case s == "" && !emptyOK:
		v.add(field, "must not be empty")
	case !utf8.ValidString(s):
		v.add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(s) > maxLen:
		v.add(field, "must be at most %d characters, got %d", maxLen, utf8.RuneCountInString(s))
	default:
		return true
	}
	return false
}

// tagText adds the character rules of tag keys and values to text.
func (v *validator) tagText(field, s string, maxLen int, emptyOK bool) {
	if !v.text(field, s, maxLen, emptyOK) {
		return
	}
	if msg := forbiddenChar(s); msg != "" {
		v.add(field, "must not contain %s", msg)
	}
}

// forbiddenChar describes the first forbidden character of s, or returns "".
func forbiddenChar(s string) string {
	for _, r := range s {
		if r < 0x20 {
			return fmt.Sprintf("control character 0x%02x", r)
		}
		if strings.ContainsRune(ForbiddenTagChars, r) {
			return fmt.Sprintf("'%c'", r)
		}
	}
	return ""
}
