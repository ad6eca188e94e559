package testkit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape in the Prometheus text format: metric families by name.
type Metrics map[string]*dto.MetricFamily

// Series is one series of a metric family: its labels and its value.
type Series struct {
	Labels map[string]string
	// Value is a counter's or a gauge's value, or a histogram's or a summary's sample count.
	Value float64
}

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	return families, nil
}

// ScrapeMetrics gets and parses the metrics at url with c (http.DefaultClient when nil). Names,
// when given, ask the endpoint for these families only, which keeps a scrape cheap.
func ScrapeMetrics(ctx context.Context, c *http.Client, metricsURL string, names ...string) (Metrics, error) {
	text, err := MetricsText(ctx, c, metricsURL, names...)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(bytes.NewReader(text))
}

// MetricsText gets the metrics at url as ScrapeMetrics does, and returns them as served.
func MetricsText(ctx context.Context, c *http.Client, metricsURL string, names ...string) ([]byte, error) {
	if c == nil {
		c = http.DefaultClient
	}
	if len(names) > 0 {
		metricsURL += "?" + url.Values{"name[]": names}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping metrics at %s: %s", metricsURL, resp.Status)
	}
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics at %s: %w", metricsURL, err)
	}
	return text, nil
}

// Scrape returns a function that scrapes the metrics at url with http.DefaultClient.
func Scrape(metricsURL string) func(gomega.Gomega) Metrics {
	return func(g gomega.Gomega) Metrics {
		m, err := ScrapeMetrics(context.Background(), nil, metricsURL)
		g.Expect(err).NotTo(gomega.HaveOccurred())
		return m
	}
}

// Series returns the series of a family whose labels include want (every series when want is
// empty); none when the family is absent.
func (m Metrics) Series(family string, want map[string]string) []Series {
	var out []Series
	for _, metric := range m[family].GetMetric() {
		labels := make(map[string]string, len(metric.GetLabel()))
		for _, l := range metric.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if matches(labels, want) {
			out = append(out, Series{Labels: labels, Value: value(metric)})
		}
	}
	return out
}

// Sum adds up the values of the series Series returns: 0 when there are none.
func (m Metrics) Sum(family string, want map[string]string) float64 {
	total := 0.0
	for _, s := range m.Series(family, want) {
		total += s.Value
	}
	return total
}

func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Summary != nil:
		return float64(m.GetSummary().GetSampleCount())
	default:
		return m.GetUntyped().GetValue()
	}
}
