package kmstest

import (
	"maps"
	"sync"
	"time"
)

// MaxRecordedRequests is how many of the latest API requests Requests keeps.
const MaxRecordedRequests = 1024

// ActionOther counts requests whose action is missing or invalid in Stats.ByAction.
const ActionOther = "other"

// Stats counts the requests to the KMS API, whatever their answer; admin requests are not
// counted.
type Stats struct {
	// Total is the number of requests.
	Total int64 `json:"total"`
	// ByAction counts requests by action: ActionFilter, ActionCount or ActionOther.
	ByAction map[string]int64 `json:"by_action"`
	// ByStatus counts answers by HTTP status; 0 counts requests that got no answer (a dropped
	// connection, or a client that gave up during an injected delay).
	ByStatus map[int]int64 `json:"by_status"`
	// FaultsApplied is how many times an injected fault acted on a request.
	FaultsApplied int64 `json:"faults_applied"`
}

// RequestRecord describes one API request as the emulator received and answered it. The
// request fields are recorded as far as the body could be decoded, valid or not.
type RequestRecord struct {
	// Time is when the request arrived.
	Time time.Time `json:"time"`
	// Action is the body's action as sent, "" if absent.
	Action string `json:"action"`
	// Limit and Offset are the raw JSON of the fields as sent (`"1000"`, `1000`), "" if absent.
	Limit  string `json:"limit,omitempty"`
	Offset string `json:"offset,omitempty"`
	// Tags, Matches and Sequence are the body's fields as sent.
	Tags     []TagFilter `json:"tags,omitempty"`
	Matches  []Match     `json:"matches,omitempty"`
	Sequence string      `json:"sequence,omitempty"`
	// Auth is how the request authenticated, or tried to: AuthToken, AuthAKSK, AuthAnonymous
	// (authentication disabled), or AuthNone when no credentials were sent or checked.
	Auth string `json:"auth,omitempty"`
	// AccessKey is the AK of a signed request; never a secret.
	AccessKey string `json:"access_key,omitempty"`
	// Status is the HTTP status answered, 0 for none.
	Status int `json:"status"`
	// Code is the KMS error code answered, "" when the answer has no KMS error body.
	Code string `json:"code,omitempty"`
	// Fault is the kind of the injected fault that acted on the request, "" for none.
	Fault FaultKind `json:"fault,omitempty"`
	// ContentType is the request's Content-Type header.
	ContentType string `json:"content_type,omitempty"`
}

type stats struct {
	mu       sync.Mutex
	total    int64
	byAction map[string]int64
	byStatus map[int]int64
	recent   []RequestRecord
}

func newStats() *stats {
	return &stats{byAction: make(map[string]int64), byStatus: make(map[int]int64)}
}

func (s *stats) record(rec RequestRecord) {
	action := rec.Action
	if action != ActionFilter && action != ActionCount {
		action = ActionOther
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total++
	s.byAction[action]++
	s.byStatus[rec.Status]++
	if len(s.recent) >= MaxRecordedRequests {
		s.recent = append(s.recent[:0], s.recent[len(s.recent)-MaxRecordedRequests/2:]...)
	}
	s.recent = append(s.recent, rec)
}

// Stats returns the request counters.
func (e *Emulator) Stats() Stats {
	e.stats.mu.Lock()
	defer e.stats.mu.Unlock()
	return Stats{
		Total:         e.stats.total,
		ByAction:      maps.Clone(e.stats.byAction),
		ByStatus:      maps.Clone(e.stats.byStatus),
		FaultsApplied: e.faults.applied.Load(),
	}
}

// Requests returns the latest API requests (at most MaxRecordedRequests), oldest first.
func (e *Emulator) Requests() []RequestRecord {
	e.stats.mu.Lock()
	defer e.stats.mu.Unlock()
	return append([]RequestRecord(nil), e.stats.recent...)
}

// ResetStats zeroes the counters and forgets the recorded requests.
func (e *Emulator) ResetStats() {
	e.stats.mu.Lock()
	defer e.stats.mu.Unlock()
	e.stats.total = 0
	e.stats.byAction = make(map[string]int64)
	e.stats.byStatus = make(map[int]int64)
	e.stats.recent = nil
	e.faults.applied.Store(0)
}
