package controllers

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestBoundedKeepsTheStartAndFitsTheLimit(t *testing.T) {
	long := "spec.target.data[\"x\"]: " + strings.Repeat("é", 50_000)
	for _, tc := range []struct {
		name  string
		in    string
		limit int
	}{
		{"short stays as it is", "spec.tags: bad", 1024},
		{"exactly at the limit", strings.Repeat("a", 1024), 1024},
		{"an event note", long, maxEventNote},
		{"a condition message", long, maxConditionMessage},
		{"one byte over", strings.Repeat("a", 1025), 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := bounded(tc.in, tc.limit)
			if len(got) > tc.limit {
				t.Fatalf("len = %d, over the limit %d", len(got), tc.limit)
			}
			if !utf8.ValidString(got) {
				t.Fatal("cut inside a character")
			}
			if len(tc.in) <= tc.limit {
				if got != tc.in {
					t.Fatalf("changed a message within the limit: %q", got)
				}
				return
			}
			if !strings.HasPrefix(tc.in, strings.SplitN(got, " … (", 2)[0]) || !strings.HasSuffix(got, "bytes cut)") {
				t.Fatalf("does not keep the start and say what it cut: %q", got[max(0, len(got)-60):])
			}
			if !strings.HasPrefix(got, tc.in[:10]) {
				t.Fatalf("lost the start: %q", got[:20])
			}
		})
	}
}
