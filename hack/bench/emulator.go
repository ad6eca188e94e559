package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/kms-key-sync/kms-key-sync/internal/kms"
	"github.com/kms-key-sync/kms-key-sync/internal/testkit"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// emulator is the KMS emulator, served over TLS in this process, plus a log of when each API request
// arrived and which filter it asked for. Its Stats count the calls since the last ResetStats; the
// log, kept for the whole scenario, tells which first sync or refresh cycle a call belongs to.
type emulator struct {
	*kmstest.Emulator
	URL string
	ts  *httptest.Server

	mu    sync.Mutex
	calls []kmsCall
}

type kmsCall struct {
	at     time.Time
	filter string
}

// startEmulator serves keysPerFilter keys for each of the scenario's filters to callers that
// present benchToken.
func startEmulator(sc scenario) (*emulator, error) {
	e := &emulator{Emulator: kmstest.New(kmstest.WithToken(benchToken))}
	for f := range sc.filters {
		keys := kmstest.GenerateKeys(sc.keysPerFilter, map[string]string{tagKey: filterValue(f), "bench": "true"})
		if err := e.PutKeys(keys...); err != nil {
			return nil, err
		}
	}
	e.ts = testkit.ServeTLS(e.logRequests(e.Handler()))
	e.URL = e.ts.URL
	progress("KMS emulator at %s with %d keys", e.URL, e.KeyCount())
	return e, nil
}

func (e *emulator) close() error {
	e.ts.Close()
	return nil
}

// logRequests notes the time and filter of every API request (not admin requests) before
// passing it on.
func (e *emulator) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/admin/") {
			next.ServeHTTP(w, r)
			return
		}
		at := time.Now()
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct {
			Tags []kms.TagFilter `json:"tags"`
		}
		_ = json.Unmarshal(body, &req)
		e.mu.Lock()
		e.calls = append(e.calls, kmsCall{at: at, filter: filterKey(req.Tags)})
		e.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// callsUntil counts the logged calls of every filter made until end.
func (e *emulator) callsUntil(end time.Time) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.calls {
		if !c.at.After(end) {
			n++
		}
	}
	return n
}

// callsBetween counts the logged calls of each filter made after from[filter] (the start of the
// log when from has no entry) and until to[filter]. Filters missing from to count nothing.
func (e *emulator) callsBetween(from, to map[string]time.Time) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.calls {
		end, ok := to[c.filter]
		if ok && !c.at.After(end) && c.at.After(from[c.filter]) {
			n++
		}
	}
	return n
}
