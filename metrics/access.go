package metrics

import "github.com/prometheus/client_golang/prometheus"

// accessStateNames is every value of access_decisions_total's label: the
// paywall's states (billing.AccessStates), and "other" for a subscription
// status Stripe added later, which the decision passes through as its
// state but which never becomes a label of its own.
var accessStateNames = []string{"none", "active", "grace", "trialing", "past_due", "incomplete",
	"unpaid", "paused", "ended", "other"}

func newAccessDecisions(reg *prometheus.Registry) (*prometheus.CounterVec, map[string]prometheus.Counter) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "access_decisions_total",
		Help: "Paywall decisions served (the access read and the success call's answer), by state; other is a subscription status Stripe added later.",
	}, []string{"state"})
	reg.MustRegister(c)
	children := make(map[string]prometheus.Counter, len(accessStateNames))
	for _, s := range accessStateNames {
		children[s] = c.WithLabelValues(s)
	}
	return c, children
}

// AccessDecision counts a paywall decision of state.
func (m *Metrics) AccessDecision(state string) {
	m.accessCounters[AccessLabel(state)].Inc()
}

// AccessLabel is the label value AccessDecision records for state.
func AccessLabel(state string) string {
	for _, s := range accessStateNames {
		if s == state && s != "other" {
			return s
		}
	}
	return "other"
}
