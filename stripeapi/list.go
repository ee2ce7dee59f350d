package stripeapi

import "time"

// Dated is an object with Stripe's time of the answer that carried it (the
// Date header of the response, whole seconds, UTC).
type Dated[T any] struct {
	Obj T
	At  time.Time
}

// ListParams filters a list. Zero values mean no filter. PageSize 0 = 100
// (Stripe's max).
type ListParams struct {
	Customer      string    // customer=
	CreatedGTE    time.Time // created[gte]= (unix seconds)
	StartingAfter string    // resume after this id (the last one handled)
	PageSize      int
}
