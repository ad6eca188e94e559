package testkit

import (
	"net/http"
	"strings"
	"sync"

	"k8s.io/client-go/rest"
)

// APIWrites counts the writes (every request but GET) that a client makes to the API server, by
// path, as a proxy in front of the API server would see them. It counts what reaches the wire,
// not what the client believes it wrote.
type APIWrites struct {
	mu     sync.Mutex
	byPath map[string]int
}

// Config returns a copy of cfg whose requests are counted.
func (w *APIWrites) Config(cfg *rest.Config) *rest.Config {
	counted := rest.CopyConfig(cfg)
	counted.Wrap(func(next http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if req.Method != http.MethodGet {
				w.mu.Lock()
				if w.byPath == nil {
					w.byPath = map[string]int{}
				}
				w.byPath[req.URL.Path]++
				w.mu.Unlock()
			}
			return next.RoundTrip(req)
		})
	})
	return counted
}

// Under returns how many writes went to paths that begin with prefix, such as
// "/api/v1/namespaces/ns/configmaps/".
func (w *APIWrites) Under(prefix string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for path, count := range w.byPath {
		if strings.HasPrefix(path, prefix) {
			n += count
		}
	}
	return n
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
