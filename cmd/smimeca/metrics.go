package main

import (
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// scepMetrics implements scep.Metrics with Prometheus.
type scepMetrics struct {
	ops     *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newSCEPMetrics(reg prometheus.Registerer) *scepMetrics {
	m := &scepMetrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smimeca_scep_operations_total",
			Help: "SCEP PKIOperations by message type and result (issued, refused, error, malformed).",
		}, []string{"type", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "smimeca_scep_operation_duration_seconds",
			Help:    "Latency of SCEP PKIOperations.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"type"}),
	}
	reg.MustRegister(m.ops, m.latency)
	return m
}

// ObserveEnrollment implements scep.Metrics.
func (m *scepMetrics) ObserveEnrollment(messageType, result string, d time.Duration) {
	m.ops.WithLabelValues(messageType, result).Inc()
	m.latency.WithLabelValues(messageType).Observe(d.Seconds())
}

// pprofMux serves the runtime profiles of net/http/pprof.
func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
