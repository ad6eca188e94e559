package kms

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestFilterValidateAccepts(t *testing.T) {
	tags := make([]TagFilter, MaxTags)
	for i := range tags {
		tags[i] = TagFilter{Key: fmt.Sprintf("k%d", i)}
	}
	for name, f := range map[string]Filter{
		"empty":                   {},
		"max tags":                {Tags: tags},
		"empty values list":       {Tags: []TagFilter{{Key: "env"}}},
		"empty value":             {Tags: []TagFilter{{Key: "env", Values: []string{""}}}},
		"max key length (runes)":  {Tags: []TagFilter{{Key: strings.Repeat("键", MaxTagKeyLength)}}},
		"max value length":        {Tags: []TagFilter{{Key: "k", Values: []string{strings.Repeat("é", MaxTagValueLength)}}}},
		"printable specials":      {Tags: []TagFilter{{Key: "a-b_c.d:e/f@g h", Values: []string{"!#$%&'()+,;?[]^`{|}~\"\u007f"}}}},
		"same value, two keys":    {Tags: []TagFilter{{Key: "a", Values: []string{"x"}}, {Key: "b", Values: []string{"x"}}}},
		"match":                   {Matches: []Match{{Key: MatchResourceName, Value: "alias"}}},
		"max match length":        {Matches: []Match{{Key: MatchResourceName, Value: strings.Repeat("m", MaxMatchValueLength)}}},
		"match may contain '*'":   {Matches: []Match{{Key: MatchResourceName, Value: "a*b"}}},
		"two matches are allowed": {Matches: []Match{{Key: MatchResourceName, Value: "a"}, {Key: MatchResourceName, Value: "b"}}},
	} {
		if err := f.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestFilterValidateRejects(t *testing.T) {
	tooMany := make([]TagFilter, MaxTags+1)
	for i := range tooMany {
		tooMany[i] = TagFilter{Key: fmt.Sprintf("k%d", i)}
	}
	tests := []struct {
		name string
		f    Filter
		want []string // "field: message" of every problem, in order
	}{
		{"empty key", Filter{Tags: []TagFilter{{Key: ""}}}, []string{"tags[0].key: must not be empty"}},
		{"long key", Filter{Tags: []TagFilter{{Key: strings.Repeat("k", MaxTagKeyLength+1)}}},
			[]string{"tags[0].key: must be at most 36 characters, got 37"}},
		{"long value", Filter{Tags: []TagFilter{{Key: "k", Values: []string{strings.Repeat("键", MaxTagValueLength+1)}}}},
			[]string{"tags[0].values[0]: must be at most 43 characters, got 44"}},
		{"too many tags", Filter{Tags: tooMany}, []string{"tags: must name at most 10 keys, got 11"}},
		{"duplicate key", Filter{Tags: []TagFilter{{Key: "a"}, {Key: "b"}, {Key: "a"}}},
			[]string{`tags[2].key: duplicate key "a" (also tags[0])`}},
		{"duplicate value", Filter{Tags: []TagFilter{{Key: "a", Values: []string{"x", "y", "x"}}}},
			[]string{`tags[0].values[2]: duplicate value "x" (also values[0])`}},
		{"control char in key", Filter{Tags: []TagFilter{{Key: "a\tb"}}},
			[]string{"tags[0].key: must not contain control character 0x09"}},
		{"NUL in value", Filter{Tags: []TagFilter{{Key: "a", Values: []string{"x\x00"}}}},
			[]string{"tags[0].values[0]: must not contain control character 0x00"}},
		{"invalid UTF-8", Filter{Tags: []TagFilter{{Key: "a\xff"}}}, []string{"tags[0].key: must be valid UTF-8"}},
		{"match key", Filter{Matches: []Match{{Key: "key_id", Value: "x"}}},
			[]string{`matches[0].key: must be "resource_name", got "key_id"`}},
		{"empty match value", Filter{Matches: []Match{{Key: MatchResourceName}}}, []string{"matches[0].value: must not be empty"}},
		{"long match value", Filter{Matches: []Match{{Key: MatchResourceName, Value: strings.Repeat("m", MaxMatchValueLength+1)}}},
			[]string{"matches[0].value: must be at most 255 characters, got 256"}},
		{"all problems are collected", Filter{
			Tags:    []TagFilter{{Key: "ok"}, {Key: "x", Values: []string{"v"}}, {Key: "env", Values: []string{"a", "b*"}}},
			Matches: []Match{{Key: "other", Value: ""}},
		}, []string{
			"tags[2].values[1]: must not contain '*'",
			`matches[0].key: must be "resource_name", got "other"`,
			"matches[0].value: must not be empty",
		}},
	}
	for _, c := range ForbiddenTagChars {
		tests = append(tests, struct {
			name string
			f    Filter
			want []string
		}{fmt.Sprintf("forbidden %q", c), Filter{Tags: []TagFilter{{Key: "k" + string(c)}, {Key: "ok", Values: []string{string(c)}}}},
			[]string{fmt.Sprintf("tags[0].key: must not contain '%c'", c), fmt.Sprintf("tags[1].values[0]: must not contain '%c'", c)}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			var got []string
			for _, p := range verr.Problems {
				got = append(got, p.Error())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems =\n%q\nwant\n%q", got, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "invalid filter: ") {
				t.Errorf("error %q lacks prefix", err)
			}
		})
	}
}

// TestForbiddenCharsMatchPattern keeps ForbiddenTagChars and ForbiddenTagCharPattern (the CRD's
// form of the rule) saying the same thing for every ASCII character.
func TestForbiddenCharsMatchPattern(t *testing.T) {
	re := mustCompile(t, ForbiddenTagCharPattern)
	for c := 0; c < 128; c++ {
		s := string(rune(c))
		if got, want := forbiddenChar(s) == "", !re.MatchString(s); got != want {
			t.Errorf("char 0x%02x: allowed by validation %v, by pattern %v", c, got, want)
		}
	}
}
