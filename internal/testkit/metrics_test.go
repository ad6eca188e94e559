package testkit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMetricsTextAsksForTheNamedFamilies(t *testing.T) {
	var query string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		_, _ = w.Write([]byte("# TYPE a_total counter\na_total{x=\"1\"} 2\n"))
	}))
	defer srv.Close()
	text, err := MetricsText(context.Background(), nil, srv.URL, "a_total")
	if err != nil || string(text) != "# TYPE a_total counter\na_total{x=\"1\"} 2\n" {
		t.Fatalf("MetricsText = %q, %v", text, err)
	}
	if query != "name%5B%5D=a_total" {
		t.Errorf("query %q", query)
	}
	m, err := ScrapeMetrics(context.Background(), srv.Client(), srv.URL)
	if err != nil || m.Sum("a_total", map[string]string{"x": "1"}) != 2 {
		t.Errorf("ScrapeMetrics = %v, %v", m, err)
	}
	srv.Close()
	if _, err := MetricsText(context.Background(), nil, srv.URL); err == nil {
		t.Error("no error from a closed server")
	}
}
