package render

import (
	"fmt"
	"testing"
	"time"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

// manyKeys are n keys in id order; one in five is Enabled, and the one at n/2 has the alias
// payments-db.
func manyKeys(n int) []Key {
	return keysEnabledEvery(n, 5)
}

// keysEnabledEvery are n keys in id order, one in every Enabled, and the one at n/2 has the
// alias payments-db.
func keysEnabledEvery(n, every int) []Key {
	keys := make([]kms.Key, n)
	for i := range keys {
		keys[i] = kms.Key{ID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), Alias: fmt.Sprintf("payments-key-%d", i),
			State: kms.StateDisabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}, CreationDate: time.Unix(1521449277+int64(i), 0)}
		if i%every == 0 {
			keys[i].State = kms.StateEnabled
		}
	}
	if n > 0 {
		keys[n/2].Alias = "payments-db"
	}
	return Keys(keys)
}

// threeKeys are the keys the recipes' golden files are rendered from.
func threeKeys() []Key {
	return Keys([]kms.Key{
		{ID: "0a000000-0000-4000-8000-000000000001", Alias: "payments-db", State: kms.StateEnabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}, CreationDate: time.Unix(1521449277, 0)},
		{ID: "0b000000-0000-4000-8000-000000000002", Alias: "payments-api", State: kms.StateDisabled, Spec: "RSA_2048", Usage: "SIGN_VERIFY", Origin: "kms",
			Tags: map[string]string{"env": "prod", "team": "payments"}},
		{ID: "0c000000-0000-4000-8000-000000000003", Alias: "search-index", State: kms.StateEnabled, Spec: "AES_256", Usage: "ENCRYPT_DECRYPT", Origin: "external",
			Tags: map[string]string{"env": "staging", "team": "search"}},
	})
}

func compileOne(t testing.TB, src string) *Expressions {
	t.Helper()
	exprs, err := Compile(kmsv1alpha1.TargetSpec{MergePolicy: kmsv1alpha1.MergePolicyReplace, Data: map[string]string{"out": src}})
	if err != nil {
		t.Fatalf("compile %q: %v", src, err)
	}
	return exprs
}
