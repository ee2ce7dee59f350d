package stripefake

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// get answers status and body of GET path, or status 0 when the request
// ended before an answer.
func hget(t *testing.T, ctx context.Context, s *Server, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer sk_test_x")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer func() { _ = res.Body.Close() }()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, body
}

func TestHostileModes(t *testing.T) {
	t.Parallel()
	s := New(t)
	for i := range 3 {
		s.PutSubscription(Subscription{ID: NewID("sub_"), Customer: "cus_h", Status: "active",
			Created: time.Unix(1_700_000_000+int64(i), 0)})
	}
	ctx := context.Background()
	page := func(path string) (ids []string, more bool) {
		t.Helper()
		code, body := hget(t, ctx, s, path)
		var l struct {
			HasMore bool `json:"has_more"`
			Data    []struct {
				ID       string `json:"id"`
				Customer any    `json:"customer"`
				Status   string `json:"status"`
				Created  any    `json:"created"`
			} `json:"data"`
		}
		if code != 200 || json.Unmarshal(body, &l) != nil {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		for _, d := range l.Data {
			ids = append(ids, d.ID+"/"+d.Status+"/"+jsonString(d.Customer)+"/"+jsonString(d.Created))
		}
		return ids, l.HasMore
	}
	all, _ := page("/v1/subscriptions?status=all&limit=2")

	s.SetHostile("/v1/subscriptions", Endless)
	first, more := page("/v1/subscriptions?status=all&limit=2")
	again, more2 := page("/v1/subscriptions?status=all&limit=2&starting_after=" + idOf(first[1]))
	if !more || !more2 || first[0] != all[0] || again[0] != first[0] || again[1] != first[1] {
		t.Fatalf("Endless: %v %v then %v %v", first, more, again, more2)
	}
	s.SetHostile("/v1/subscriptions", EmptyMore)
	if ids, more := page("/v1/subscriptions?status=all"); len(ids) != 0 || !more {
		t.Fatalf("EmptyMore: %v %v", ids, more)
	}
	s.SetHostile("/v1/subscriptions", UnknownEnum)
	if ids, _ := page("/v1/subscriptions?status=all"); len(ids) != 3 || !strings.Contains(ids[0], `/awaiting_approval/"cus_h"/`) {
		t.Fatalf("UnknownEnum: %v", ids)
	}
	s.SetHostile("/v1/subscriptions", NoCustomer)
	if ids, _ := page("/v1/subscriptions?status=all"); len(ids) != 3 || !strings.Contains(ids[0], "/active/null/") {
		t.Fatalf("NoCustomer: %v", ids)
	}
	s.SetHostile("/v1/subscriptions", BadObject)
	if ids, _ := page("/v1/subscriptions?status=all"); len(ids) != 3 || !strings.Contains(ids[2], `/"not a time"`) {
		t.Fatalf("BadObject: %v", ids)
	}
	s.SetHostile("/v1/subscriptions", BadJSON)
	if code, body := hget(t, ctx, s, "/v1/subscriptions"); code != 200 || json.Valid(body) {
		t.Fatalf("BadJSON: %d %s", code, body)
	}
	s.SetHostile("/v1/subscriptions", RateLimited)
	if code, _ := hget(t, ctx, s, "/v1/subscriptions"); code != 429 {
		t.Fatalf("RateLimited: %d", code)
	}
	s.SetHostile("/v1/subscriptions", ServerError)
	if code, _ := hget(t, ctx, s, "/v1/subscriptions"); code != 500 {
		t.Fatalf("ServerError: %d", code)
	}
	// The longest prefix decides; other paths behave.
	s.SetHostile("/v1/subscriptions/", Behave)
	if code, _ := hget(t, ctx, s, "/v1/customers"); code != 200 {
		t.Fatalf("another path: %d", code)
	}
	s.SetHostile("/v1/subscriptions", Hang)
	hctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if code, _ := hget(t, hctx, s, "/v1/subscriptions"); code != 0 {
		t.Fatalf("Hang answered %d", code)
	}
	done := make(chan int)
	go func() {
		code, _ := hget(t, ctx, s, "/v1/subscriptions")
		done <- code
	}()
	for s.HostileHits(Hang) < 2 {
		time.Sleep(time.Millisecond)
	}
	s.SetHostile("/v1/subscriptions", Behave) // ends the hang
	if code := <-done; code != 0 {
		t.Fatalf("a released hang answered %d", code)
	}
	if ids, _ := page("/v1/subscriptions?status=all"); len(ids) != 3 {
		t.Fatalf("after Behave: %v", ids)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func idOf(s string) string {
	id, _, _ := strings.Cut(s, "/")
	return id
}
