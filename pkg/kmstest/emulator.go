package kmstest

import (
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

const (
	// DefaultProjectID is the project the emulator serves unless WithProjectID says otherwise.
	DefaultProjectID = "0e1b2c3d4f5a46b7c8d9e0f1a2b3c4d5"
	// MaxBodyBytes is the longest request body accepted (KMS.0203 beyond).
	MaxBodyBytes    = 1 << 20
	contentTypeJSON = "application/json;charset=UTF-8"
)

// Emulator is an in-memory KMS serving ListKmsByTags. It holds all state and is safe for
// concurrent use. ServeHTTP serves the KMS API only; Handler adds the admin API.
type Emulator struct {
	projectID string
	shape     atomic.Int32
	store     *store
	creds     *credentials
	faults    faultQueue
	stats     *stats
	logger    *slog.Logger
	now       func() time.Time
	handler   http.Handler
}

// Option configures New, NewServer and NewTLSServer.
type Option func(*Emulator)

// WithProjectID sets the project the emulator serves; requests for another get 403 KMS.0305.
func WithProjectID(id string) Option { return func(e *Emulator) { e.projectID = id } }

// WithShape sets the initial response shape.
func WithShape(s Shape) Option { return func(e *Emulator) { e.SetShape(s) } }

// WithToken accepts IAM tokens (see AddToken).
func WithToken(tokens ...string) Option {
	return func(e *Emulator) {
		for _, t := range tokens {
			e.AddToken(t)
		}
	}
}

// WithAKSK accepts an AK/SK pair (see AddAKSK).
func WithAKSK(ak, sk, securityToken string) Option {
	return func(e *Emulator) { e.AddAKSK(ak, sk, securityToken) }
}

// WithAuthDisabled accepts every request, with or without credentials.
func WithAuthDisabled() Option { return func(e *Emulator) { e.SetAuthDisabled(true) } }

// WithKeys stores keys (see PutKeys); keys without an id are ignored.
func WithKeys(keys ...Key) Option {
	return func(e *Emulator) {
		for _, k := range keys {
			if k.ID != "" {
				_ = e.store.put([]Key{k})
			}
		}
	}
}

// WithLogger logs one line per API request (method, path, action, status, code, auth kind,
// fault, duration). Secrets are never logged. The default is no logging.
func WithLogger(l *slog.Logger) Option { return func(e *Emulator) { e.logger = l } }

// WithClock sets the clock X-Sdk-Date is checked against (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(e *Emulator) {
		if now != nil {
			e.now = now
		}
	}
}

// New returns an Emulator for DefaultProjectID, in ShapeSchema, with no keys and no accepted
// credentials unless options say otherwise.
func New(opts ...Option) *Emulator {
	e := &Emulator{
		projectID: DefaultProjectID,
		store:     newStore(),
		creds:     newCredentials(),
		stats:     newStats(),
		now:       time.Now,
	}
	for _, opt := range opts {
		opt(e)
	}
	e.handler = wire.ByPrefix(adminPrefix, e.AdminHandler(), http.HandlerFunc(e.ServeHTTP))
	return e
}

// ProjectID returns the project the emulator serves.
func (e *Emulator) ProjectID() string { return e.projectID }

// ActionPath returns the API path, /v1.0/{project_id}/kms/resource_instances/action.
func (e *Emulator) ActionPath() string {
	return "/v1.0/" + e.projectID + "/kms/resource_instances/action"
}

// SetShape switches the response shape; other values are ignored.
func (e *Emulator) SetShape(s Shape) {
	if s.valid() {
		e.shape.Store(int32(s))
	}
}

// Shape returns the current response shape.
func (e *Emulator) Shape() Shape { return Shape(e.shape.Load()) }

// SetAuthDisabled turns authentication off (every request is accepted) or back on.
func (e *Emulator) SetAuthDisabled(disabled bool) {
	e.creds.mu.Lock()
	defer e.creds.mu.Unlock()
	e.creds.disabled = disabled
}

// Handler serves the KMS API and, under /admin/, the admin API (see AdminHandler).
func (e *Emulator) Handler() http.Handler { return e.handler }

// reply is an answer to write. A zero status writes nothing; drop closes the connection.
type reply struct {
	drop        bool
	status      int
	contentType string
	body        []byte
	retryAfter  string
	allow       string
	code        string
}

func errorReply(err *apiError) reply {
	body := wire.Marshal(ErrorBody{Error: ErrorDetail{Code: err.code, Message: err.msg}})
	return reply{status: err.status, contentType: contentTypeJSON, body: body, code: err.code}
}

// ServeHTTP serves ListKmsByTags. The request is counted and logged before the answer is
// written, so a client that has its answer sees it in Stats.
func (e *Emulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := RequestRecord{Time: start, ContentType: r.Header.Get("Content-Type")}
	rep := e.answer(r, &rec)
	if rep.status != 0 {
		rec.Status, rec.Code = rep.status, rep.code
	}
	e.stats.record(rec)
	e.logRequest(r, &rec, time.Since(start))
	switch {
	case rep.drop:
		drop(w)
	case rep.status != 0:
		write(w, rep)
	}
}

// noAnswer is the reply when nothing is to be written: the client went away.
var noAnswer = reply{}

// answer works out the reply to a request.
func (e *Emulator) answer(r *http.Request, rec *RequestRecord) reply {
	project, ok := projectFromPath(r.URL.Path)
	if !ok {
		return errorReply(newAPIError(http.StatusNotFound, CodeInvalidURL, "no API at %s", r.URL.Path))
	}
	if r.Method != http.MethodPost {
		rep := errorReply(newAPIError(http.StatusMethodNotAllowed, CodeInvalidURL, "method %s not allowed, use POST", r.Method))
		rep.allow = http.MethodPost
		return rep
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return errorReply(badRequest(CodeInvalidJSON, "cannot read the request body: %v", err))
	}
	wire, decodeErr := decodeWire(body)
	describe(rec, &wire)
	if f, ok := e.faults.take(phaseGateway, wire.actionHint(), wire.offsetHint()); ok {
		rec.Fault = f.Kind
		if !wait(r, f.Delay) {
			return noAnswer
		}
		if f.Kind == FaultDrop {
			return reply{drop: true}
		}
		if rep, ok := gatewayReply(f); ok {
			return rep
		}
	}
	if len(body) > MaxBodyBytes {
		return errorReply(badRequest(CodeMessageTooLong, "the request body is longer than %d bytes", MaxBodyBytes))
	}
	auth, aerr := e.authenticate(r, body)
	rec.Auth, rec.AccessKey = auth.kind, auth.accessKey
	if aerr != nil {
		return errorReply(aerr)
	}
	if project != e.projectID {
		return errorReply(forbidden(CodeProjectMismatch, "the credentials are not valid for project %q", project))
	}
	if decodeErr != nil {
		return errorReply(decodeErr)
	}
	q, aerr := wire.validate()
	if aerr != nil {
		return errorReply(aerr)
	}
	return e.list(r, &q, rec)
}

// list answers a valid request, applying a response fault if one is due.
func (e *Emulator) list(r *http.Request, q *query, rec *RequestRecord) reply {
	f, faulted := e.faults.take(phaseResponse, q.action, q.offset)
	if faulted {
		rec.Fault = f.Kind
		if !wait(r, f.Delay) {
			return noAnswer
		}
		adjustQuery(f, q)
	}
	p := e.store.list(q)
	if faulted {
		adjustPage(f, &p)
	}
	var body []byte
	if q.action == ActionCount {
		body = renderCount(p.total)
	} else {
		body = renderPage(p.records, p.total, e.Shape())
	}
	if faulted {
		body = adjustBody(f, body)
	}
	return reply{status: http.StatusOK, contentType: contentTypeJSON, body: body}
}

// projectFromPath extracts project_id from /v1.0/{project_id}/kms/resource_instances/action.
func projectFromPath(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, "/v1.0/")
	if !ok {
		return "", false
	}
	project, tail, ok := strings.Cut(rest, "/")
	if !ok || project == "" || tail != "kms/resource_instances/action" {
		return "", false
	}
	return project, true
}

// describe copies what a request asked for into its record.
func describe(rec *RequestRecord, w *wireRequest) {
	rec.Action = w.actionHint()
	rec.Limit, rec.Offset = string(w.Limit), string(w.Offset)
	if w.Sequence != nil {
		rec.Sequence = *w.Sequence
	}
	for _, t := range w.Tags {
		if t.Key != nil {
			rec.Tags = append(rec.Tags, TagFilter{Key: *t.Key, Values: t.Values})
		}
	}
	for _, m := range w.Matches {
		if m.Key != nil && m.Value != nil {
			rec.Matches = append(rec.Matches, Match{Key: MatchKey(*m.Key), Value: *m.Value})
		}
	}
}

func write(w http.ResponseWriter, rep reply) {
	h := w.Header()
	h.Set("Content-Type", rep.contentType)
	h.Set("Content-Length", strconv.Itoa(len(rep.body)))
	if rep.retryAfter != "" {
		h.Set("Retry-After", rep.retryAfter)
	}
	if rep.allow != "" {
		h.Set("Allow", rep.allow)
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(rep.body)
}

// drop closes the connection without an answer. Where the connection cannot be hijacked
// (HTTP/2) it aborts the handler, which resets the stream.
func drop(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		_ = conn.Close()
		return
	}
	panic(http.ErrAbortHandler)
}

func (e *Emulator) logRequest(r *http.Request, rec *RequestRecord, d time.Duration) {
	if e.logger == nil {
		return
	}
	e.logger.LogAttrs(r.Context(), slog.LevelInfo, "kms request",
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("action", rec.Action),
		slog.Int("status", rec.Status),
		slog.String("code", rec.Code),
		slog.String("auth", rec.Auth),
		slog.String("fault", string(rec.Fault)),
		slog.Duration("duration", d),
	)
}
