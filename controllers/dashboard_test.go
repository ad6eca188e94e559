package controllers_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest"
)

// The files that name the operator's metrics in PromQL. The chart's PrometheusRule is kept equal
// to the kustomize one by internal/deploytest.
const (
	dashboardFile      = "../charts/kms-key-sync/dashboards/kms-key-sync.json"
	prometheusRuleFile = "../config/prometheus/prometheus_rule.yaml"
)

// query is a PromQL expression and where it was found, for messages.
type query struct {
	where, expr string
}

// grafanaVariable matches Grafana's template variables: $name, ${name} and ${name:format}.
var grafanaVariable = regexp.MustCompile(`\$\{[A-Za-z0-9_]+(:[a-z]+)?\}|\$[A-Za-z0-9_]+`)

// labelValues matches the query of a Grafana variable, label_values(selector, label).
var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$`)

// asPromQL replaces Grafana's variables with values the PromQL parser accepts.
func asPromQL(expr string) string {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		expr = m[1]
	}
	return grafanaVariable.ReplaceAllStringFunc(expr, func(v string) string {
		if strings.Contains(v, "__") {
			return "5m" // $__rate_interval, $__interval, $__range
		}
		return "variable"
	})
}

// dashboardQueries returns the queries of every panel, nested ones included, and of every
// templating variable of the chart's Grafana dashboard.
func dashboardQueries() []query {
	GinkgoHelper()
	data, err := os.ReadFile(dashboardFile)
	Expect(err).NotTo(HaveOccurred())
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Type    string   `json:"type"`
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var dashboard struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	Expect(json.Unmarshal(data, &dashboard)).To(Succeed(), dashboardFile)

	var out []query
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			Expect(p.Targets).NotTo(BeEmpty(), "panel %q has no query", p.Title)
			for _, t := range p.Targets {
				out = append(out, query{where: "panel " + p.Title, expr: t.Expr})
			}
		}
	}
	walk(dashboard.Panels)
	for _, v := range dashboard.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, ok := v.Query.(map[string]any)
		Expect(ok).To(BeTrue(), "variable %s has no query object", v.Name)
		expr, _ := q["query"].(string)
		out = append(out, query{where: "variable " + v.Name, expr: expr})
	}
	return out
}

// alertQueries returns the expression of every alert of the sample PrometheusRule.
func alertQueries() []query {
	GinkgoHelper()
	data, err := os.ReadFile(prometheusRuleFile)
	Expect(err).NotTo(HaveOccurred())
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	Expect(yaml.Unmarshal(data, &rule)).To(Succeed(), prometheusRuleFile)
	var out []query
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			out = append(out, query{where: "alert " + r.Alert, expr: r.Expr})
		}
	}
	return out
}

// metricNames parses a PromQL expression and returns the metric names it selects.
func metricNames(q query) []string {
	GinkgoHelper()
	Expect(strings.TrimSpace(q.expr)).NotTo(BeEmpty(), "%s has an empty query", q.where)
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(asPromQL(q.expr))
	Expect(err).NotTo(HaveOccurred(), "%s: the query %q is no valid PromQL", q.where, q.expr)
	var names []string
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		Expect(name).NotTo(BeEmpty(), "%s: the query %q selects series by no metric name", q.where, q.expr)
		names = append(names, name)
		return nil
	})
	Expect(names).NotTo(BeEmpty(), "%s: the query %q selects no metric", q.where, q.expr)
	return names
}

// promQLNames returns the names under which PromQL selects a family's series: a histogram's are
// name_bucket, name_sum and name_count, a summary's name, name_sum and name_count.
func promQLNames(f *dto.MetricFamily) []string {
	name := f.GetName()
	switch f.GetType() {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return []string{name + "_bucket", name + "_sum", name + "_count"}
	case dto.MetricType_SUMMARY:
		return []string{name, name + "_sum", name + "_count"}
	}
	return []string{name}
}

// exposedNames returns the PromQL names of the series of families.
func exposedNames(families []*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for _, f := range families {
		for _, name := range promQLNames(f) {
			out[name] = true
		}
	}
	return out
}

// hasSeries reports whether a family has a series with all of the given label values.
func hasSeries(families []*dto.MetricFamily, name string, want map[string]string) bool {
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			matches := true
			for k, v := range want {
				matches = matches && have[k] == v
			}
			if matches {
				return true
			}
		}
	}
	return false
}

var _ = Describe("The Grafana dashboard and the sample alerts", func() {
	It("query, in valid PromQL, only metrics the operator exposes, and show each of the operator's own", func() {
		By("a selector synced with keyless credentials, then failing")
		f, sel := syncedAsOperator("dashboard", kmsv1alpha1.ClusterKmsProviderAuth{NodeAgency: &kmsv1alpha1.NodeAgency{}}, func(project string) {
			agencyIAM.SetNodeAgency(project)
		})
		Expect(f.KMS.InjectFault(kmstest.Fault{Kind: kmstest.FaultKMSError, Code: "KMS.0202"})).To(Succeed())
		f.ForceSync(sel)
		Eventually(f.ReadyReason(sel)).Should(Equal(kmsv1alpha1.ReasonKMSRequestFailed))

		families, err := ctrlmetrics.Registry.Gather()
		Expect(err).NotTo(HaveOccurred())
		selector := map[string]string{"namespace": f.Namespace, "selector": sel.Name}
		// The series of both outcomes exist, so the names below are those of a running operator.
		Expect(hasSeries(families, "kms_key_sync_selector_last_sync_timestamp_seconds", selector)).To(BeTrue())
		Expect(hasSeries(families, "kms_key_sync_selector_reason", map[string]string{
			"namespace": f.Namespace, "selector": sel.Name, "reason": kmsv1alpha1.ReasonKMSRequestFailed,
		})).To(BeTrue())
		Expect(hasSeries(families, "kms_key_sync_listing_duration_seconds", map[string]string{"outcome": "success"})).To(BeTrue())
		Expect(hasSeries(families, "kms_key_sync_listing_duration_seconds", map[string]string{"outcome": "failure"})).To(BeTrue())
		Expect(hasSeries(families, "kms_key_sync_credential_refreshes_total", map[string]string{"method": "node_agency"})).To(BeTrue())
		exposed := exposedNames(families)

		dashboard, alerts := dashboardQueries(), alertQueries()
		Expect(dashboard).NotTo(BeEmpty())
		Expect(alerts).NotTo(BeEmpty())
		shown := map[string]bool{}
		for _, q := range append(dashboard, alerts...) {
			for _, name := range metricNames(q) {
				Expect(exposed).To(HaveKey(name),
					"%s queries %s, which the operator does not expose; its own metrics are %v", q.where, name, ownNames(exposed))
				if strings.HasPrefix(q.where, "panel ") || strings.HasPrefix(q.where, "variable ") {
					shown[name] = true
				}
			}
		}

		By("every metric of the operator's own on the dashboard")
		for _, family := range families {
			if strings.HasPrefix(family.GetName(), "kms_key_sync_") {
				Expect(slices.ContainsFunc(promQLNames(family), func(name string) bool { return shown[name] })).To(BeTrue(),
					"the dashboard (%s) has no query of %s", dashboardFile, family.GetName())
			}
		}
	})

	It("are checked under the names PromQL selects, and refused when they are not PromQL", func() {
		exposed := exposedNames([]*dto.MetricFamily{{
			Name: new("kms_key_sync_listing_duration_seconds"), Type: dto.MetricType_HISTOGRAM.Enum(),
		}})
		Expect(exposed).To(Equal(map[string]bool{
			"kms_key_sync_listing_duration_seconds_bucket": true,
			"kms_key_sync_listing_duration_seconds_sum":    true,
			"kms_key_sync_listing_duration_seconds_count":  true,
		}))
		Expect(metricNames(query{where: "test", expr: `sum(rate(kms_key_sync_listing_duration_seconds_bucket{namespace=~"${namespace}"}[$__rate_interval])) / sum({__name__="kms_key_sync_keys"})`})).
			To(Equal([]string{"kms_key_sync_listing_duration_seconds_bucket", "kms_key_sync_keys"}))
		Expect(metricNames(query{where: "test", expr: "label_values(kms_key_sync_selector_ready, namespace)"})).
			To(Equal([]string{"kms_key_sync_selector_ready"}))
		// The bare name of a classic histogram selects nothing.
		Expect(exposed).NotTo(HaveKey(metricNames(query{where: "test", expr: "rate(kms_key_sync_listing_duration_seconds[5m])"})[0]))
		failures := InterceptGomegaFailures(func() {
			metricNames(query{where: "test", expr: "sum(rate(kms_key_sync_keys[5m]"})
		})
		Expect(failures).To(ContainElement(ContainSubstring("is no valid PromQL")))
	})
})

// ownNames returns the sorted names of the operator's own metrics among names.
func ownNames(names map[string]bool) []string {
	var out []string
	for name := range names {
		if strings.HasPrefix(name, "kms_key_sync_") {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
