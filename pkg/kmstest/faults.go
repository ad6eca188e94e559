package kmstest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FaultKind names what a Fault does.
type FaultKind string

// The fault kinds. Gateway faults act before authentication; response faults change a
// successful answer.
const (
	// FaultThrottle answers 429 with an API-gateway style JSON body and, when RetryAfter > 0,
	// a Retry-After header in seconds.
	FaultThrottle FaultKind = "throttle"
	// FaultServerError answers Status (500, 502, 503 or 504; default 503) with an HTML body.
	FaultServerError FaultKind = "server_error"
	// FaultLatency only waits Delay (every fault may carry a Delay), then serves normally. The
	// wait ends early when the client cancels; nothing is written then.
	FaultLatency FaultKind = "latency"
	// FaultDrop hijacks the connection and closes it without an answer.
	FaultDrop FaultKind = "drop"
	// FaultKMSError answers a KMS error body with Code (required) and Message; Status
	// defaults to 403 for KMS.03xx, 500 for KMS.01xx and 400 otherwise.
	FaultKMSError FaultKind = "kms_error"
	// FaultMalformedJSON answers 200 with a body that is not JSON.
	FaultMalformedJSON FaultKind = "malformed_json"
	// FaultTruncatedJSON answers 200 with the first half of the real body (Content-Length
	// matches the truncated body).
	FaultTruncatedJSON FaultKind = "truncated_json"
	// FaultTotalDrift adds Delta (default 1, may be negative; the result is at least 0) to
	// total_count. It only applies to filter pages with offset > 0.
	FaultTotalDrift FaultKind = "total_drift"
	// FaultDuplicate serves the page starting one record early, so the last record of the
	// previous page appears again. It only applies to filter pages with offset > 0.
	FaultDuplicate FaultKind = "duplicate"
	// FaultEmptyPage answers a filter page with no resources but the real total_count.
	FaultEmptyPage FaultKind = "empty_page"
)

// Fault is an injected misbehaviour. It applies to the requests it matches (Action, and the
// kind's own condition), after letting the first Skip of them through, for Times requests
// (0: until ClearFaults).
type Fault struct {
	// Kind is what the fault does.
	Kind FaultKind `json:"kind"`
	// Action restricts the fault to ActionFilter or ActionCount requests; "" matches any.
	Action string `json:"action,omitempty"`
	// Skip is how many matching requests pass untouched before the fault acts.
	Skip int `json:"skip,omitempty"`
	// Times is how many requests the fault acts on; 0 means until ClearFaults.
	Times int `json:"times,omitempty"`
	// Delay is waited before the fault acts (JSON: a duration string such as "250ms").
	Delay time.Duration `json:"-"`
	// Status is the HTTP status of FaultServerError and FaultKMSError.
	Status int `json:"status,omitempty"`
	// Code and Message are the KMS error of FaultKMSError.
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// RetryAfter is the Retry-After of FaultThrottle in seconds; 0 sends none.
	RetryAfter int `json:"retry_after,omitempty"`
	// Delta is what FaultTotalDrift adds to total_count.
	Delta int `json:"delta,omitempty"`
}

type faultJSON Fault

type faultWire struct {
	faultJSON
	Delay string `json:"delay,omitempty"`
}

// MarshalJSON writes Delay as a duration string.
func (f Fault) MarshalJSON() ([]byte, error) {
	w := faultWire{faultJSON: faultJSON(f)}
	if f.Delay != 0 {
		w.Delay = f.Delay.String()
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads Delay as a duration string.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var w faultWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*f = Fault(w.faultJSON)
	if w.Delay != "" {
		d, err := time.ParseDuration(w.Delay)
		if err != nil {
			return fmt.Errorf("fault delay: %w", err)
		}
		f.Delay = d
	}
	return nil
}

type faultPhase int

const (
	phaseGateway faultPhase = iota
	phaseResponse
)

func (k FaultKind) phase() (faultPhase, bool) {
	switch k {
	case FaultThrottle, FaultServerError, FaultLatency, FaultDrop, FaultKMSError:
		return phaseGateway, true
	case FaultMalformedJSON, FaultTruncatedJSON, FaultTotalDrift, FaultDuplicate, FaultEmptyPage:
		return phaseResponse, true
	default:
		return 0, false
	}
}

// normalize checks a fault and fills its defaults.
func (f Fault) normalize() (Fault, error) {
	if _, ok := f.Kind.phase(); !ok {
		return f, fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	if f.Skip < 0 || f.Times < 0 || f.Delay < 0 || f.RetryAfter < 0 {
		return f, fmt.Errorf("fault %s: skip, times, delay and retry_after must not be negative", f.Kind)
	}
	if f.Action != "" && f.Action != ActionFilter && f.Action != ActionCount {
		return f, fmt.Errorf("fault %s: action must be empty, %q or %q", f.Kind, ActionFilter, ActionCount)
	}
	switch f.Kind {
	case FaultServerError:
		if f.Status == 0 {
			f.Status = http.StatusServiceUnavailable
		}
		if f.Status < 500 || f.Status > 599 {
			return f, fmt.Errorf("fault %s: status %d is not 5xx", f.Kind, f.Status)
		}
	case FaultKMSError:
		if !strings.HasPrefix(f.Code, "KMS.") {
			return f, fmt.Errorf("fault %s: code must be a KMS code such as KMS.0303, got %q", f.Kind, f.Code)
		}
		if f.Status == 0 {
			f.Status = statusForCode(f.Code)
		}
		if f.Status < 400 || f.Status > 599 {
			return f, fmt.Errorf("fault %s: status %d is not an error status", f.Kind, f.Status)
		}
		if f.Message == "" {
			f.Message = messageForCode(f.Code)
		}
	case FaultTotalDrift:
		if f.Delta == 0 {
			f.Delta = 1
		}
	}
	return f, nil
}

// applies reports whether f is meant for a request in phase with action and offset.
func (f *Fault) applies(phase faultPhase, action string, offset int) bool {
	if p, _ := f.Kind.phase(); p != phase {
		return false
	}
	if f.Action != "" && f.Action != action {
		return false
	}
	switch f.Kind {
	case FaultTotalDrift, FaultDuplicate:
		return action == ActionFilter && offset > 0
	case FaultEmptyPage:
		return action == ActionFilter
	}
	return true
}

// faultQueue holds pending faults in injection order.
type faultQueue struct {
	mu      sync.Mutex
	pending atomic.Int32 // len(list), read without the lock on the hot path
	list    []*Fault
	applied atomic.Int64
}

func (q *faultQueue) push(f Fault) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.list = append(q.list, &f)
	q.pending.Store(int32(len(q.list)))
}

func (q *faultQueue) clear() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.list = nil
	q.pending.Store(0)
}

func (q *faultQueue) snapshot() []Fault {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Fault, len(q.list))
	for i, f := range q.list {
		out[i] = *f
	}
	return out
}

// take returns the fault to apply to a request, if any, and uses it up. Matching faults that
// still have Skip left count the request down and let it pass to the next fault.
func (q *faultQueue) take(phase faultPhase, action string, offset int) (Fault, bool) {
	if q.pending.Load() == 0 {
		return Fault{}, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, f := range q.list {
		if !f.applies(phase, action, offset) {
			continue
		}
		if f.Skip > 0 {
			f.Skip--
			continue
		}
		taken := *f
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				q.list = slices.Delete(q.list, i, i+1)
				q.pending.Store(int32(len(q.list)))
			}
		}
		q.applied.Add(1)
		return taken, true
	}
	return Fault{}, false
}

// InjectFault queues a fault; see Fault and FaultKind.
func (e *Emulator) InjectFault(f Fault) error {
	f, err := f.normalize()
	if err != nil {
		return fmt.Errorf("inject fault: %w", err)
	}
	e.faults.push(f)
	return nil
}

// Faults returns the pending faults, with their remaining Skip and Times.
func (e *Emulator) Faults() []Fault { return e.faults.snapshot() }

// ClearFaults drops every pending fault.
func (e *Emulator) ClearFaults() { e.faults.clear() }

// wait sleeps d or until the request is cancelled; it reports whether the full time passed.
func wait(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

const malformedJSON = `{"resources":[{"resource_id":"0",,"resource_detail":{]},"total_count":`

// gatewayReply is what a gateway fault answers; ok is false when the request goes on to be
// served normally (latency) or is dropped.
func gatewayReply(f Fault) (reply, bool) {
	switch f.Kind {
	case FaultThrottle:
		rep := reply{status: http.StatusTooManyRequests, contentType: contentTypeJSON,
			body: []byte(`{"error_code":"APIGW.0308","error_msg":"The throttling threshold has been reached: policy user over ratelimit","request_id":"emulator"}`)}
		if f.RetryAfter > 0 {
			rep.retryAfter = fmt.Sprint(f.RetryAfter)
		}
		return rep, true
	case FaultServerError:
		text := fmt.Sprintf("%d %s", f.Status, http.StatusText(f.Status))
		body := "<html>\r\n<head><title>" + text + "</title></head>\r\n<body>\r\n<center><h1>" + text +
			"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
		return reply{status: f.Status, contentType: "text/html", body: []byte(body)}, true
	case FaultKMSError:
		return errorReply(newAPIError(f.Status, f.Code, "%s", f.Message)), true
	default:
		return reply{}, false
	}
}

// adjustQuery applies the response faults that change what is listed.
func adjustQuery(f Fault, q *query) {
	if f.Kind == FaultDuplicate && q.offset > 0 {
		q.offset--
	}
}

// adjustPage applies the response faults that change the listing's outcome.
func adjustPage(f Fault, p *page) {
	switch f.Kind {
	case FaultTotalDrift:
		p.total = max(0, p.total+f.Delta)
	case FaultEmptyPage:
		p.records = nil
	}
}

// adjustBody applies the response faults that break the encoding.
func adjustBody(f Fault, body []byte) []byte {
	switch f.Kind {
	case FaultMalformedJSON:
		return []byte(malformedJSON)
	case FaultTruncatedJSON:
		return body[:len(body)/2]
	default:
		return body
	}
}
