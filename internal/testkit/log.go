package testkit

import (
	"bytes"
	"io"
	"sync"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// JSONLogger returns a logger that writes every line of V(verbosity) and below to w as JSON, as
// the operator logs with --zap-encoder=json: V(0) alone at verbosity 0, everything down to
// V(10) at 10. Development mode samples nothing away.
func JSONLogger(w io.Writer, verbosity int) logr.Logger {
	return zap.New(zap.WriteTo(w), zap.UseDevMode(true), zap.JSONEncoder(), zap.Level(zapcore.Level(-verbosity)))
}

// Buffer collects what several goroutines write, such as a logger's lines, for reading at any
// time.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Len returns how many bytes were written.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// String returns what was written.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// From returns what was written from offset on, such as a Len taken earlier.
func (b *Buffer) From(offset int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf.Bytes()[min(offset, b.buf.Len()):])
}
