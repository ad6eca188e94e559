package kmstest

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// scan is what list answers, found without the tag index: every stored key is checked, and the
// page is cut from all the matches.
func scan(s *store, q *query) page {
	matches := slices.DeleteFunc(slices.Clone(s.snapshot()), func(r *record) bool { return !q.matches(&r.key) })
	p := page{total: len(matches)}
	if q.action == ActionFilter {
		from := min(q.offset, len(matches))
		p.records = matches[from:min(from+q.limit, len(matches))]
	}
	return p
}

func recordIDs(records []*record) []string {
	ids := make([]string, len(records))
	for i, r := range records {
		ids[i] = r.key.ID
	}
	return ids
}

// tagPool is the tags of the random store; "owner" is a tag key no key carries.
var tagPool = map[string][]string{
	"env":  {"prod", "staging", "dev"},
	"team": {"payments", "search", "infra"},
	"app":  {"app-0", "app-1", "app-2", "app-3", "app-4", "app-5", "app-6", "app-7", "app-8", "app-9"},
	"tier": {"gold"},
}

var aliasWords = []string{"payments", "db", "api", "search", "cache", "legacy"}

func randomKeys(rnd *rand.Rand, n int) []Key {
	keys := make([]Key, n)
	for i := range keys {
		tags := map[string]string{}
		if rnd.IntN(10) > 0 { // one key in ten has no tags
			for _, k := range slices.Sorted(maps.Keys(tagPool)) {
				if rnd.IntN(2) == 0 {
					tags[k] = tagPool[k][rnd.IntN(len(tagPool[k]))]
				}
			}
		}
		keys[i] = Key{
			ID:    fmt.Sprintf("%016x", rnd.Uint64()),
			Alias: aliasWords[rnd.IntN(len(aliasWords))] + "-" + aliasWords[rnd.IntN(len(aliasWords))],
			Tags:  tags,
		}
	}
	return keys
}

// randomQuery draws tag conditions over the pool and an absent key and value, with and
// without values, name matches, and a page anywhere in the result.
func randomQuery(rnd *rand.Rand) query {
	q := query{action: ActionCount}
	if rnd.IntN(5) > 0 {
		q.action = ActionFilter
		q.limit = []int{1, 3, 20, MaxPageSize}[rnd.IntN(4)]
		q.offset = []int{0, 0, rnd.IntN(50), rnd.IntN(2000)}[rnd.IntN(4)]
	}
	keys := append(slices.Sorted(maps.Keys(tagPool)), "owner")
	rnd.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for _, k := range keys[:rnd.IntN(4)] {
		pool := append(slices.Clone(tagPool[k]), "none")
		rnd.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
		values := pool[:rnd.IntN(min(4, len(pool)+1))]
		if len(values) > 0 && rnd.IntN(20) == 0 {
			values = append(values, values[0]) // validation rejects this; the store must not rely on it
		}
		q.tags = append(q.tags, tagCond{key: k, values: values})
	}
	for range rnd.IntN(3) {
		q.names = append(q.names, aliasWords[rnd.IntN(len(aliasWords))])
	}
	return q
}

func hasValues(q *query) bool {
	return slices.ContainsFunc(q.tags, func(c tagCond) bool { return len(c.values) > 0 })
}

func TestListIndexMatchesScan(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	s := newStore()
	for range 3 {
		if err := s.put(randomKeys(rnd, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	var indexed, indexedHits int
	for i := range 1000 {
		q := randomQuery(rnd)
		got, want := s.list(&q), scan(s, &q)
		if got.total != want.total || !slices.Equal(got.records, want.records) {
			t.Fatalf("query %d %+v: got total %d, %d records from %v; want total %d, %d records from %v",
				i, q, got.total, len(got.records), recordIDs(got.records[:min(3, len(got.records))]),
				want.total, len(want.records), recordIDs(want.records[:min(3, len(want.records))]))
		}
		if !hasValues(&q) {
			continue
		}
		indexed++
		if len(got.records) > 0 {
			indexedHits++
		}
		n, fewest := len(s.current().candidates(&q)), mostSelective(s, &q)
		if n != fewest && distinctValues(&q) {
			t.Fatalf("query %d %+v: %d candidates, want the %d keys of the most selective condition", i, q, n, fewest)
		}
	}
	if indexedHits < indexed/10 {
		t.Errorf("only %d of %d indexed queries returned records; the comparison proves little", indexedHits, indexed)
	}
}

// distinctValues reports whether no condition names a value twice, as validation ensures.
func distinctValues(q *query) bool {
	for _, c := range q.tags {
		if len(slices.Compact(slices.Sorted(slices.Values(c.values)))) != len(c.values) {
			return false
		}
	}
	return true
}

// mostSelective counts, by scanning, the keys of q's tag condition with values that fewest
// keys satisfy.
func mostSelective(s *store, q *query) int {
	fewest := -1
	for _, c := range q.tags {
		if len(c.values) == 0 {
			continue
		}
		one := query{action: ActionCount, tags: []tagCond{c}}
		if n := scan(s, &one).total; fewest < 0 || n < fewest {
			fewest = n
		}
	}
	return fewest
}

func TestListIndexPages(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	s := newStore()
	if err := s.put(randomKeys(rnd, 2000)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; {
		q := randomQuery(rnd)
		if !hasValues(&q) {
			continue
		}
		i++
		all := q
		all.action, all.offset, all.limit = ActionFilter, 0, len(s.snapshot())
		want := scan(s, &all)
		q.action, q.limit = ActionFilter, 1+rnd.IntN(7)
		var got []*record
		for q.offset = 0; q.offset < want.total; q.offset += q.limit {
			p := s.list(&q)
			if p.total != want.total {
				t.Fatalf("query %+v: total %d, want %d", q, p.total, want.total)
			}
			got = append(got, p.records...)
		}
		if !slices.Equal(got, want.records) {
			t.Fatalf("pages of %+v: %v, want %v", q, recordIDs(got), recordIDs(want.records))
		}
		q.action, q.offset, q.limit = ActionCount, 0, 0
		if p := s.list(&q); p.total != want.total || p.records != nil {
			t.Fatalf("count %+v: total %d with %d records, want %d and none", q, p.total, len(p.records), want.total)
		}
	}
}

// TestListSeesEveryWrite lists after each kind of write, the view being built just before it.
func TestListSeesEveryWrite(t *testing.T) {
	e := New()
	q := query{action: ActionFilter, limit: MaxPageSize, tags: []tagCond{
		{key: "env", values: []string{"prod"}},
		{key: "team", values: []string{"payments", "search"}},
	}}
	check := func(step string, want ...string) {
		t.Helper()
		p := e.store.list(&q)
		if got := recordIDs(p.records); !slices.Equal(got, want) || p.total != len(want) {
			t.Fatalf("after %s: ids %v, total %d; want %v", step, got, p.total, want)
		}
		if ref := scan(e.store, &q); !slices.Equal(p.records, ref.records) {
			t.Fatalf("after %s: index gives %v, scan %v", step, recordIDs(p.records), recordIDs(ref.records))
		}
	}
	prodPayments := map[string]string{"env": "prod", "team": "payments"}
	if err := e.PutKeys(Key{ID: "a", Tags: prodPayments}, Key{ID: "b", Tags: map[string]string{"env": "prod"}}); err != nil {
		t.Fatal(err)
	}
	check("PutKeys", "a")

	if err := e.PutKeys(Key{ID: "c", Tags: map[string]string{"env": "prod", "team": "search"}}); err != nil {
		t.Fatal(err)
	}
	check("PutKeys of a new key", "a", "c")

	if err := e.SetKeyTags("b", prodPayments); err != nil {
		t.Fatal(err)
	}
	check("SetKeyTags adding a tag", "a", "b", "c")

	if err := e.SetKeyTags("a", nil); err != nil {
		t.Fatal(err)
	}
	check("SetKeyTags removing the tags", "b", "c")

	if err := e.SetKeyState("c", StateDisabled); err != nil {
		t.Fatal(err)
	}
	check("SetKeyState", "b", "c")
	if p := e.store.list(&q); p.records[1].key.State != StateDisabled {
		t.Errorf("after SetKeyState: listed state %v, want %v", p.records[1].key.State, StateDisabled)
	}

	if !e.DeleteKey("b") {
		t.Fatal("DeleteKey: not found")
	}
	check("DeleteKey", "c")

	if err := e.ReplaceKeys(Key{ID: "d", Tags: prodPayments}, Key{ID: "e", Tags: map[string]string{"team": "search"}}); err != nil {
		t.Fatal(err)
	}
	check("ReplaceKeys", "d")
}

// BenchmarkListByTag lists 100,000 keys by tags with 1,000 distinct values.
func BenchmarkListByTag(b *testing.B) {
	s := newStore()
	for i := range 1000 {
		tags := map[string]string{"app": fmt.Sprintf("app-%03d", i), "env": []string{"prod", "staging"}[i%2]}
		if err := s.put(GenerateKeys(100, tags)); err != nil {
			b.Fatal(err)
		}
	}
	for _, bm := range []struct {
		name string
		q    query
	}{
		{"filter", query{action: ActionFilter, limit: MaxPageSize, tags: []tagCond{
			{key: "env", values: []string{"prod"}}, {key: "app", values: []string{"app-042", "app-777"}}}}},
		{"count", query{action: ActionCount, tags: []tagCond{{key: "app", values: []string{"app-042"}}}}},
	} {
		b.Run(bm.name, func(b *testing.B) {
			s.snapshot()
			for b.Loop() {
				if p := s.list(&bm.q); p.total != 100 {
					b.Fatalf("total %d, want 100", p.total)
				}
			}
		})
	}
}
