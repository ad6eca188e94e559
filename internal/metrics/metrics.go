// Package metrics defines the operator's Prometheus metrics, registered with controller-runtime's
// registry so they are served on the manager's metrics endpoint. No label ever holds a secret.
package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/kms-key-sync/kms-key-sync/internal/keysource"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

var (
	// KMSRequests counts KMS API requests by operation (filter, count) and outcome.
	KMSRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_key_sync_kms_requests_total",
		Help: "KMS API requests, by operation and outcome.",
	}, []string{"operation", "outcome"})

	// KMSRequestDuration observes the latency of KMS API requests.
	KMSRequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kms_key_sync_kms_request_duration_seconds",
		Help:    "Latency of KMS API requests, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	}, []string{"operation"})

	// Syncs counts sync attempts by result: Synced, or the failure's condition reason.
	Syncs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_key_sync_syncs_total",
		Help: "Sync attempts, by result (Synced or the Ready condition's failure reason).",
	}, []string{"result"})

	// Keys is the number of synced keys per selector and state.
	Keys = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kms_key_sync_keys",
		Help: "Keys in a selector's ConfigMap, by state.",
	}, []string{"namespace", "selector", "state"})

	// SelectorReady is 1 while a selector is Ready and 0 otherwise.
	SelectorReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kms_key_sync_selector_ready",
		Help: "1 when the selector's Ready condition is True, else 0.",
	}, []string{"namespace", "selector"})

	// ConfigMapWrites counts writes of output ConfigMaps.
	ConfigMapWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kms_key_sync_configmap_writes_total",
		Help: "Writes of output ConfigMaps (an unchanged refresh writes nothing).",
	})

	// CoalescedRequests counts listings served by another selector's identical listing.
	CoalescedRequests = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kms_key_sync_coalesced_requests_total",
		Help: "Listings answered by an identical listing in flight or just finished, instead of calling KMS.",
	})
	// SelectorReason is 1 for the reason of a selector's Ready condition; a selector has one
	// series, for its current reason.
	SelectorReason = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kms_key_sync_selector_reason",
		Help: "1 for the reason of the selector's Ready condition (Synced or a failure's reason).",
	}, []string{"namespace", "selector", "reason"})

	// SelectorLastSync is when a selector's keys were last listed successfully, whether or not
	// anything changed: the status is written only when something did, so this is where
	// freshness shows.
	SelectorLastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kms_key_sync_selector_last_sync_timestamp_seconds",
		Help: "Unix time of the selector's last successful listing, changed or not.",
	}, []string{"namespace", "selector"})

	// SelectorRefreshInterval is a selector's spec.refreshInterval, for alerts on freshness.
	SelectorRefreshInterval = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kms_key_sync_selector_refresh_interval_seconds",
		Help: "The selector's refresh interval.",
	}, []string{"namespace", "selector"})

	// StatusWrites counts writes of selectors' statuses.
	StatusWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kms_key_sync_status_writes_total",
		Help: "Writes of KmsKeySelector statuses (an unchanged refresh writes nothing).",
	})

	// ListingDuration observes how long a listing that called KMS took, all pages included.
	ListingDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kms_key_sync_listing_duration_seconds",
		Help:    "Duration of listings that called KMS, all pages included, by outcome (success, failure).",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	}, []string{"outcome"})

	// Listings counts the listings that called KMS by what asked for the one that began it.
	Listings = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_key_sync_listings_total",
		Help: "Listings that called KMS, by what asked for the request that began each (first_sync, spec_change, force_sync, provider_change, refresh, retry, repair, unscheduled); requests answered by coalescing are not counted.",
	}, []string{"trigger"})

	CredentialRefreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kms_key_sync_credential_refreshes_total",
		Help: "Refreshes of keyless credentials, by method (workload_identity, node_agency, pod_identity) and outcome (success, failure).",
	}, []string{"method", "outcome"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(KMSRequests, KMSRequestDuration, Syncs, Keys, SelectorReady,
		ConfigMapWrites, CoalescedRequests, CredentialRefreshes, SelectorReason, SelectorLastSync,
		SelectorRefreshInterval, StatusWrites, ListingDuration, Listings)
}

// ObserveCredentialRefresh records one refresh of keyless credentials.
func ObserveCredentialRefresh(method string, err error) {
	CredentialRefreshes.WithLabelValues(method, outcomeOf(err)).Inc()
}

// ObserveListing records one listing that called KMS, begun for a request of trigger.
func ObserveListing(trigger keysource.Trigger, d time.Duration, err error) {
	Listings.WithLabelValues(string(trigger)).Inc()
	ListingDuration.WithLabelValues(outcomeOf(err)).Observe(d.Seconds())
}

// selectorReasons is each selector's reason series, so that a change deletes the old one without
// searching every series, which costs the whole vector at thousands of selectors.
var selectorReasons = struct {
	sync.Mutex
	of map[[2]string]string
}{of: map[[2]string]string{}}

// SetSelectorReason makes reason the one reason series of the selector.
func SetSelectorReason(namespace, name, reason string) {
	selectorReasons.Lock()
	defer selectorReasons.Unlock()
	key := [2]string{namespace, name}
	if old, ok := selectorReasons.of[key]; ok && old != reason {
		SelectorReason.DeleteLabelValues(namespace, name, old)
	}
	selectorReasons.of[key] = reason
	SelectorReason.WithLabelValues(namespace, name, reason).Set(1)
}

func outcomeOf(err error) string {
	if err != nil {
		return "failure"
	}
	return "success"
}

// KMSObserver records every KMS request in KMSRequests and KMSRequestDuration, then tells Next,
// if any.
type KMSObserver struct {
	Next kms.Observer
}

var _ kms.Observer = KMSObserver{}

// ObserveRequest implements kms.Observer.
func (o KMSObserver) ObserveRequest(operation, outcome string, d time.Duration) {
	KMSRequests.WithLabelValues(operation, outcome).Inc()
	KMSRequestDuration.WithLabelValues(operation).Observe(d.Seconds())
	if o.Next != nil {
		o.Next.ObserveRequest(operation, outcome, d)
	}
}

// ForgetSelector drops the series of a deleted selector.
func ForgetSelector(namespace, name string) {
	labels := prometheus.Labels{"namespace": namespace, "selector": name}
	Keys.DeletePartialMatch(labels)
	selectorReasons.Lock()
	if reason, ok := selectorReasons.of[[2]string{namespace, name}]; ok {
		SelectorReason.DeleteLabelValues(namespace, name, reason)
		delete(selectorReasons.of, [2]string{namespace, name})
	}
	selectorReasons.Unlock()
	SelectorReady.Delete(labels)
	SelectorLastSync.Delete(labels)
	SelectorRefreshInterval.Delete(labels)
}
