package kmstest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrKeyNotFound is wrapped in the error of UpdateKey, SetKeyState and SetKeyTags for an id
// the store does not hold; test for it with errors.Is.
var ErrKeyNotFound = errors.New("key not found")

// record is one stored key. It is immutable once stored, so readers share it without locks;
// a write replaces the record. It caches its rendered JSON per shape.
type record struct {
	key      Key
	rendered [shapeCount]atomic.Pointer[[]byte]
}

func newRecord(k Key) *record {
	k.Tags = maps.Clone(k.Tags)
	return &record{key: k}
}

// encoded returns the record's resource object in shape s, rendering it once.
func (r *record) encoded(s Shape) []byte {
	if b := r.rendered[s].Load(); b != nil {
		return *b
	}
	b := renderResource(&r.key, s)
	r.rendered[s].Store(&b)
	return b
}

// store holds the keys: a map by id and a cached view of them rebuilt after writes.
type store struct {
	mu   sync.RWMutex
	byID map[string]*record
	view *view // nil when stale
}

// view is the store sorted by key id, with an index by tag. It is never modified once built,
// so readers share it without locks.
type view struct {
	sorted []*record
	byTag  map[string]map[string][]*record // tag key → tag value → records, in id order
}

func newStore() *store { return &store{byID: make(map[string]*record)} }

// current returns the view of the store, building it if a write made it stale.
func (s *store) current() *view {
	s.mu.RLock()
	v := s.view
	s.mu.RUnlock()
	if v != nil {
		return v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.view == nil {
		s.view = buildView(s.byID)
	}
	return s.view
}

func buildView(byID map[string]*record) *view {
	v := &view{sorted: make([]*record, 0, len(byID)), byTag: make(map[string]map[string][]*record)}
	for _, r := range byID {
		v.sorted = append(v.sorted, r)
	}
	slices.SortFunc(v.sorted, byKeyID)
	for _, r := range v.sorted {
		for k, val := range r.key.Tags {
			values := v.byTag[k]
			if values == nil {
				values = make(map[string][]*record)
				v.byTag[k] = values
			}
			values[val] = append(values[val], r)
		}
	}
	return v
}

func byKeyID(a, b *record) int { return strings.Compare(a.key.ID, b.key.ID) }

// snapshot returns the records sorted by key id. The slice must not be modified.
func (s *store) snapshot() []*record { return s.current().sorted }

// candidates returns, in id order, the records that may match q: those of its most selective
// tag condition with values, or every record when it has none.
func (v *view) candidates(q *query) []*record {
	var best *tagCond
	bestN := 0
	for i, c := range q.tags {
		n := 0
		for _, val := range c.values {
			n += len(v.byTag[c.key][val])
		}
		if len(c.values) > 0 && (best == nil || n < bestN) {
			best, bestN = &q.tags[i], n
		}
	}
	if best == nil {
		return v.sorted
	}
	byValue := v.byTag[best.key]
	if len(best.values) == 1 {
		return byValue[best.values[0]]
	}
	union := make([]*record, 0, bestN)
	for _, val := range best.values {
		union = append(union, byValue[val]...)
	}
	slices.SortFunc(union, byKeyID)
	return slices.Compact(union) // a value named twice would list its records twice
}

// page is the outcome of a query: the records of one page and the total number of matches.
type page struct {
	records []*record
	total   int
}

// list runs q against the store. count queries collect no records.
func (s *store) list(q *query) page {
	var p page
	for _, r := range s.current().candidates(q) {
		if !q.matches(&r.key) {
			continue
		}
		if q.action == ActionFilter && p.total >= q.offset && len(p.records) < q.limit {
			p.records = append(p.records, r)
		}
		p.total++
	}
	return p
}

func (s *store) put(keys []Key) error { return s.write(keys, false) }

func (s *store) replace(keys []Key) error { return s.write(keys, true) }

// write stores keys, first emptying the store when reset is set; it changes nothing when a key
// has no id.
func (s *store) write(keys []Key, reset bool) error {
	for i, k := range keys {
		if k.ID == "" {
			return fmt.Errorf("key %d has no id", i)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if reset {
		s.byID = make(map[string]*record, len(keys))
	}
	for _, k := range keys {
		s.byID[k.ID] = newRecord(k)
	}
	s.view = nil
	return nil
}

func (s *store) get(id string) (Key, bool) {
	s.mu.RLock()
	r, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok {
		return Key{}, false
	}
	return copyKey(r.key), true
}

func (s *store) delete(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byID[id]; !ok {
		return false
	}
	delete(s.byID, id)
	s.view = nil
	return true
}

func (s *store) update(id string, fn func(*Key)) (Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	if !ok {
		return Key{}, fmt.Errorf("update key %q: %w", id, ErrKeyNotFound)
	}
	k := copyKey(r.key)
	fn(&k)
	if k.ID != id {
		return Key{}, fmt.Errorf("update key %q: the id must not change", id)
	}
	s.byID[id] = newRecord(k)
	s.view = nil
	return copyKey(k), nil
}

func (s *store) count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byID)
}

func copyKey(k Key) Key {
	k.Tags = maps.Clone(k.Tags)
	return k
}

// PutKeys adds keys, replacing any stored key with the same id. Every key needs an id. The
// keys are stored as given; FillDefaults completes a sparse key.
func (e *Emulator) PutKeys(keys ...Key) error {
	if err := e.store.put(keys); err != nil {
		return fmt.Errorf("put keys: %w", err)
	}
	return nil
}

// ReplaceKeys replaces the whole store with keys.
func (e *Emulator) ReplaceKeys(keys ...Key) error {
	if err := e.store.replace(keys); err != nil {
		return fmt.Errorf("replace keys: %w", err)
	}
	return nil
}

// Key returns the stored key with id.
func (e *Emulator) Key(id string) (Key, bool) { return e.store.get(id) }

// Keys returns every stored key sorted by id.
func (e *Emulator) Keys() []Key {
	snap := e.store.snapshot()
	keys := make([]Key, len(snap))
	for i, r := range snap {
		keys[i] = copyKey(r.key)
	}
	return keys
}

// KeyCount returns the number of stored keys.
func (e *Emulator) KeyCount() int { return e.store.count() }

// DeleteKey removes a key and reports whether it was stored.
func (e *Emulator) DeleteKey(id string) bool { return e.store.delete(id) }

// DeleteAllKeys empties the store.
func (e *Emulator) DeleteAllKeys() { _ = e.store.replace(nil) }

// UpdateKey changes a stored key in place; fn must not change the id.
func (e *Emulator) UpdateKey(id string, fn func(*Key)) (Key, error) {
	return e.store.update(id, fn)
}

// SetKeyState changes a key's state.
func (e *Emulator) SetKeyState(id string, state State) error {
	_, err := e.store.update(id, func(k *Key) { k.State = state })
	return err
}

// SetKeyTags replaces a key's tags (nil removes them all).
func (e *Emulator) SetKeyTags(id string, tags map[string]string) error {
	_, err := e.store.update(id, func(k *Key) { k.Tags = maps.Clone(tags) })
	return err
}
