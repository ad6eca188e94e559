package controllers

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/render"
)

func manyKeys(n int) []kms.Key {
	keys := make([]kms.Key, n)
	for i := range keys {
		keys[i] = kms.Key{ID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), Alias: fmt.Sprintf("payments-key-%d", i),
			State: kms.StateEnabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}, CreationDate: time.Unix(1521449277+int64(i), 0)}
	}
	return keys
}

// ContentFits tells whether content of data and binaryData passes the size check that the
// operator makes before writing a ConfigMap; for the envtest suite.
func ContentFits(data map[string]string, binaryData map[string][]byte) bool {
	return render.Content{Data: data, BinaryData: binaryData}.Fits()
}

func TestRebuildSyncedRepairsOnlyWhatKeysJSONProves(t *testing.T) {
	ctx := context.Background()
	synced, err := render.Render(ctx, render.Keys(manyKeys(3)), nil)
	if err != nil {
		t.Fatal(err)
	}
	edited := func(edit func(c *render.Content)) render.Content {
		c := render.Content{Data: maps.Clone(synced.Data)}
		edit(&c)
		return c
	}
	id := manyKeys(1)[0].ID
	entryEdited := edited(func(c *render.Content) { c.Data[id] = "Disabled" })
	detailsEdited := edited(func(c *render.Content) {
		c.Data[kmsv1alpha1.KeysJSONKey] = strings.Replace(c.Data[kmsv1alpha1.KeysJSONKey], "Enabled", "Disabled", 1)
	})
	for _, tc := range []struct {
		name   string
		stored render.Content
		digest string
		ok     bool
	}{
		{"an edited entry, keys.json intact", entryEdited, synced.Digest(), true},
		{"keys.json edited", detailsEdited, synced.Digest(), false},
		{"written before the digest, intact", synced, "", true},
		{"written before the digest, edited", entryEdited, "", false},
	} {
		got, ok := rebuildSynced(ctx, tc.stored, tc.digest, nil)
		if ok != tc.ok || (ok && got.Digest() != synced.Digest()) {
			t.Errorf("%s: rebuildSynced = %v (digest match %v), want %v", tc.name, ok, got.Digest() == synced.Digest(), tc.ok)
		}
	}
}

func reasonOf(err error) string {
	if f := asFailure(err); f != nil {
		return f.reason
	}
	return ""
}

func TestRenderFailureReasons(t *testing.T) {
	next := time.Date(2026, 1, 1, 0, 5, 0, 0, time.UTC)
	cause := fmt.Errorf("boom")
	for _, tc := range []struct {
		err    error
		reason string
		retry  time.Time
	}{
		{&render.SpecError{Field: "f", Err: cause}, kmsv1alpha1.ReasonInvalidSpec, time.Time{}},
		{&render.ExpressionError{Field: "f", Err: cause}, kmsv1alpha1.ReasonExpressionFailed, next},
		{&render.TooLargeError{Keys: 1}, kmsv1alpha1.ReasonTargetTooLarge, time.Time{}},
		{&render.KeyIDError{ID: "a/b"}, kmsv1alpha1.ReasonKMSRequestFailed, time.Time{}},
		{cause, "", time.Time{}},
	} {
		err := renderFailure(tc.err, next)
		if reasonOf(err) != tc.reason {
			t.Errorf("%T: reason %q, want %q", tc.err, reasonOf(err), tc.reason)
		}
		if f := asFailure(err); f != nil && !f.retryAt.Equal(tc.retry) {
			t.Errorf("%T: retryAt %v, want %v", tc.err, f.retryAt, tc.retry)
		}
	}
}
