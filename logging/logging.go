// Package logging builds lockstep's slog logger: JSON when the output is not
// a terminal, text when it is, and attributes carried by the context (the
// request id, the event id, the customer) added to every line logged with it.
//
// A request scope (WithScope) also collects the attributes that code deeper
// in the request adds with With, so the one access-log line written when the
// request ends names the event or session it worked on.
//
// Secrets never belong in a log line; as a last line of defence, string
// values that carry a Stripe secret (whsec_, sk_, rk_ ...) or a connection
// string's password are masked before they are written, by redact.String.
package logging

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/lockstep/lockstep/redact"
)

type ctxKey struct{}

type scopeKey struct{}

// scope collects attributes added anywhere below a WithScope context.
type scope struct {
	mu    sync.Mutex
	attrs []slog.Attr
}

// WithScope starts a request scope: attributes later added with With on ctx
// or on any context derived from it are also returned by ScopeAttrs.
func WithScope(ctx context.Context) context.Context {
	return context.WithValue(ctx, scopeKey{}, &scope{})
}

// ScopeAttrs returns the attributes added with With since the nearest
// WithScope, the last value of each key only, in the order first added.
func ScopeAttrs(ctx context.Context) []slog.Attr { return AppendScopeAttrs(ctx, nil) }

// AppendScopeAttrs appends the scope's attributes (see ScopeAttrs) to dst without a map or a
// slice of its own (a request's scope holds a few attributes): the access
// log line's cost on every request.
func AppendScopeAttrs(ctx context.Context, dst []slog.Attr) []slog.Attr {
	sc, _ := ctx.Value(scopeKey{}).(*scope)
	if sc == nil {
		return dst
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	start := len(dst)
next:
	for _, a := range sc.attrs {
		for i := start; i < len(dst); i++ {
			if dst[i].Key == a.Key {
				dst[i] = a
				continue next
			}
		}
		dst = append(dst, a)
	}
	return dst
}

// With returns a context whose log lines carry attrs too. The attributes are
// also recorded in the request scope, if ctx has one.
func With(ctx context.Context, attrs ...slog.Attr) context.Context {
	prev, _ := ctx.Value(ctxKey{}).([]slog.Attr)
	all := make([]slog.Attr, 0, len(prev)+len(attrs))
	all = append(append(all, prev...), attrs...)
	if sc, _ := ctx.Value(scopeKey{}).(*scope); sc != nil {
		sc.mu.Lock()
		sc.attrs = append(sc.attrs, attrs...)
		sc.mu.Unlock()
	}
	return context.WithValue(ctx, ctxKey{}, all)
}

// ctxAttrs returns the attributes With stored in ctx.
func ctxAttrs(ctx context.Context) []slog.Attr {
	a, _ := ctx.Value(ctxKey{}).([]slog.Attr)
	return a
}

type ctxHandler struct{ slog.Handler }

// Handle adds the context's attributes to r, each key once (the value last
// added with With), and none whose key r already has: a line that names its
// event explicitly does not name it twice (a JSON object with a repeated key).
func (h ctxHandler) Handle(ctx context.Context, r slog.Record) error {
	attrs := ctxAttrs(ctx)
	if len(attrs) == 0 {
		return h.Handler.Handle(ctx, r)
	}
	seen := make(map[string]int, len(attrs)+r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		seen[a.Key] = -1
		return true
	})
	add := make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		switch i, ok := seen[a.Key]; {
		case !ok:
			seen[a.Key] = len(add)
			add = append(add, a)
		case i >= 0:
			add[i] = a
		}
	}
	r = r.Clone()
	r.AddAttrs(add...)
	return h.Handler.Handle(ctx, r)
}

func (h ctxHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return ctxHandler{h.Handler.WithAttrs(attrs)}
}

func (h ctxHandler) WithGroup(name string) slog.Handler { return ctxHandler{h.Handler.WithGroup(name)} }

// New returns a logger writing to w: JSON unless w is a terminal.
func New(w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: maskSecrets}
	var h slog.Handler
	if isTerminal(w) {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(ctxHandler{h})
}

// maskSecrets masks any secret in a string value (an error message that
// quoted one, say) with redact.String.
func maskSecrets(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindString {
		a.Value = slog.StringValue(redact.String(a.Value.String()))
	}
	return a
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
