package billing

import (
	"errors"
	"fmt"

	"github.com/lockstep/lockstep/stripeapi"
)

// ErrUnreadable means a sync, verify or sweep went on to its end, but some
// objects Stripe listed could not be read or stored (bad JSON for their
// kind, no customer): each was reported by id with its reason, and the
// rest was done.
var ErrUnreadable = errors.New("some objects stripe sent could not be read")

// Unreadable is one object Stripe listed that lockstep could not read or
// store.
type Unreadable struct {
	Object string // customer, subscription, invoice, event
	ID     string // as Stripe sent it
	Reason string
}

func (u Unreadable) String() string {
	return fmt.Sprintf("%s %q can't be read: %s", u.Object, u.ID, u.Reason)
}

// unreadableOf reports whether err is about one object a run should report
// and go on after: an item of a list that did not parse.
func unreadableOf(object string, err error) (Unreadable, bool) {
	var ie *stripeapi.ItemError
	if !errors.As(err, &ie) {
		return Unreadable{}, false
	}
	return Unreadable{Object: object, ID: ie.ID, Reason: ie.Err.Error()}, true
}

// unreadableError is a run's error when n objects could not be read.
func unreadableError(n int) error {
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d (each reported above, by id)", ErrUnreadable, n)
}
