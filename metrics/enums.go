package metrics

import (
	"context"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// maxEnumValues bounds the distinct unknown values counted per process;
// past it they are counted as "other".
const maxEnumValues = 50

// unknownEnums counts, for every registry, the enum values Stripe sent
// that lockstep does not know (a status Stripe added later). Values are
// Stripe's (lower-case letters, digits and underscores, at most 64, as
// the parsers check), and at most maxEnumValues of them.
var unknownEnums = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: namespace, Name: "stripe_unknown_enum_total",
	Help: "Objects read from Stripe carrying an enum value lockstep does not know (stored as Stripe names it), by object, field and value.",
}, []string{"object", "field", "value"})

var enumSeen = struct {
	sync.Mutex
	m map[[3]string]bool
}{m: map[[3]string]bool{}}

// UnknownEnum counts an object whose field holds a value lockstep does not
// know, and warns about it once per value per process. Any code that reads
// Stripe's objects may call it.
func UnknownEnum(ctx context.Context, log *slog.Logger, object, field, value string) {
	key := [3]string{object, field, value}
	enumSeen.Lock()
	first := !enumSeen.m[key]
	if first {
		if len(enumSeen.m) >= maxEnumValues {
			key[2], first = "other", false
		} else {
			enumSeen.m[key] = true
		}
	}
	enumSeen.Unlock()
	unknownEnums.WithLabelValues(key[0], key[1], key[2]).Inc()
	if first && log != nil {
		log.WarnContext(ctx, "stripe sent a value lockstep does not know; stored as Stripe names it",
			slog.String("object", object), slog.String("field", field), slog.String("value", value))
	}
}
