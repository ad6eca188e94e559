package kmstest

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

func TestPaging(t *testing.T) {
	for _, n := range []int{0, 1, 999, 1000, 1001, 2500} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			srv := newTestServer(t)
			keys := GenerateKeys(n, map[string]string{"env": "prod"})
			// Noise that the filter must exclude.
			noise := GenerateKeys(7, map[string]string{"env": "staging"})
			if err := srv.PutKeys(append(keys, noise...)...); err != nil {
				t.Fatal(err)
			}
			want := make([]string, n)
			for i, k := range keys {
				want[i] = k.ID
			}
			slices.Sort(want)

			got, calls := listAll(t, srv, kms.MaxPageSize, `,"tags":[{"key":"env","values":["prod"]}]`)
			if !slices.Equal(got, want) {
				t.Fatalf("listed %d ids, want %d (sorted, each once)", len(got), len(want))
			}
			if wantCalls := max(1, (n+kms.MaxPageSize-1)/kms.MaxPageSize); calls != wantCalls {
				t.Errorf("calls = %d, want %d", calls, wantCalls)
			}
			if st := srv.Stats(); st.ByAction[ActionFilter] != int64(calls) || st.ByStatus[200] != int64(calls) {
				t.Errorf("stats = %+v, want %d filter calls with 200", st, calls)
			}

			status, _, body := post(t, srv, `{"action":"count","tags":[{"key":"env","values":["prod"]}]}`)
			if want := fmt.Sprintf(`{"total_count":%d}`, n); status != http.StatusOK || string(body) != want {
				t.Errorf("count = %d %s, want 200 %s", status, body, want)
			}
		})
	}
}

func TestDefaultLimitAndOffset(t *testing.T) {
	srv := newTestServer(t, WithKeys(GenerateKeys(25, nil)...))
	l := list(t, srv, `{"action":"filter"}`)
	if len(l.Resources) != DefaultLimit || *l.TotalCount != 25 {
		t.Fatalf("default page: %d resources, total %d; want %d, 25", len(l.Resources), *l.TotalCount, DefaultLimit)
	}
	all := srv.Keys()
	if l.Resources[0].ResourceID != all[0].ID {
		t.Errorf("first id %s, want %s", l.Resources[0].ResourceID, all[0].ID)
	}
	l = list(t, srv, `{"action":"filter","limit":"10","offset":"20"}`)
	if got := l.ids(); len(got) != 5 || got[0] != all[20].ID {
		t.Errorf("last page = %v, want 5 ids from %s", got, all[20].ID)
	}
	l = list(t, srv, `{"action":"filter","offset":"25"}`)
	if len(l.Resources) != 0 || *l.TotalCount != 25 {
		t.Errorf("offset past the end: %d resources, total %d; want 0, 25", len(l.Resources), *l.TotalCount)
	}
	l = list(t, srv, `{"action":"filter","limit":null,"offset":null}`)
	if len(l.Resources) != DefaultLimit {
		t.Errorf("null limit: %d resources, want %d", len(l.Resources), DefaultLimit)
	}
}

func TestFilterSemantics(t *testing.T) {
	srv := newSampleServer(t)
	tests := []struct {
		name string
		body string
		want []string // aliases, in key id order
	}{
		{"no filter lists all", `{"action":"filter","limit":"100"}`,
			[]string{"payments-db", "payments-api", "payments-legacy", "payments-db-staging", "search-index", "search-cache", "search-byok", "kms/default"}},
		{"one key one value", `{"action":"filter","tags":[{"key":"env","values":["prod"]}]}`,
			[]string{"payments-db", "payments-api", "payments-legacy", "search-index"}},
		{"values of one key are ORed", `{"action":"filter","tags":[{"key":"team","values":["search","nobody"]}]}`,
			[]string{"search-index", "search-cache", "search-byok"}},
		{"different keys are ANDed", `{"action":"filter","tags":[{"key":"env","values":["staging"]},{"key":"team","values":["payments"]}]}`,
			[]string{"payments-db-staging"}},
		{"empty values means key present", `{"action":"filter","tags":[{"key":"tier","values":[]}]}`,
			[]string{"payments-api"}},
		{"absent values means key present", `{"action":"filter","tags":[{"key":"tier"}]}`,
			[]string{"payments-api"}},
		{"missing key matches nothing", `{"action":"filter","tags":[{"key":"owner","values":[]}]}`, nil},
		{"tag values are case-sensitive", `{"action":"filter","tags":[{"key":"env","values":["PROD"]}]}`, nil},
		{"resource_name substring", `{"action":"filter","matches":[{"key":"resource_name","value":"db"}]}`,
			[]string{"payments-db", "payments-db-staging"}},
		{"resource_name is case-sensitive", `{"action":"filter","matches":[{"key":"resource_name","value":"DB"}]}`, nil},
		{"matches are ANDed", `{"action":"filter","matches":[{"key":"resource_name","value":"payments"},{"key":"resource_name","value":"staging"}]}`,
			[]string{"payments-db-staging"}},
		{"tags and matches are ANDed", `{"action":"filter","tags":[{"key":"env","values":["prod"]}],"matches":[{"key":"resource_name","value":"search"}]}`,
			[]string{"search-index"}},
		{"the seed's request example", `{"offset":"0","limit":"100","action":"filter","matches":[{"key":"resource_name","value":"payments"}],"tags":[{"key":"team","values":["payments","search"]}]}`,
			[]string{"payments-db", "payments-api", "payments-legacy", "payments-db-staging"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := list(t, srv, tt.body)
			if got := l.names(); !slices.Equal(got, tt.want) && (len(got) != 0 || len(tt.want) != 0) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if *l.TotalCount != len(tt.want) {
				t.Errorf("total_count = %d, want %d", *l.TotalCount, len(tt.want))
			}
		})
	}
}

func TestFilterSeesWrites(t *testing.T) {
	srv := newSampleServer(t)
	const id = "0b6f6a0e-3a52-4c1e-9a40-1f2d3c4b5a01" // payments-db
	body := `{"action":"filter","tags":[{"key":"team","values":["payments"]}],"matches":[{"key":"resource_name","value":"payments-db"}]}`
	if got := list(t, srv, body).names(); len(got) != 2 {
		t.Fatalf("before: %v", got)
	}
	if err := srv.SetKeyTags(id, map[string]string{"team": "search"}); err != nil {
		t.Fatal(err)
	}
	if got := list(t, srv, body).names(); !slices.Equal(got, []string{"payments-db-staging"}) {
		t.Errorf("after re-tag: %v", got)
	}
	if !srv.DeleteKey("3e9c9d31-6d85-4f41-8d73-4a5f6e7d8c04") {
		t.Fatal("delete: not found")
	}
	if got := list(t, srv, body); len(got.Resources) != 0 || *got.TotalCount != 0 {
		t.Errorf("after delete: %v", got.names())
	}
	if err := srv.SetKeyState("nope", kms.StateDisabled); err == nil {
		t.Error("SetKeyState of an unknown key: no error")
	}
}
