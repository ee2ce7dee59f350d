package billing

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// decideLink's rules, row by row: what a request to map user_1 to cus_new
// decides, given the rows read under the locks.
func TestDecideLink(t *testing.T) {
	t.Parallel()
	older, at, later := time.Unix(1_700_000_000, 0), time.Unix(1_700_000_100, 0), time.Unix(1_700_000_200, 0)
	user, other := "user_1", "user_2"
	row := func(customer string, u *string, linkedAt time.Time) linkRow {
		r := linkRow{customerID: customer, userID: u}
		if u != nil {
			r.linkedAt = &linkedAt
		}
		return r
	}
	set := linkWrite{customerID: "cus_new", userID: &user, linkedAt: &at}
	clearOld := linkWrite{customerID: "cus_old"}
	for _, tc := range []struct {
		name   string
		kind   linkKind
		found  []linkRow
		want   LinkResult
		writes []linkWrite
		err    error
	}{
		{"new mapping, webhook", webhookLink, []linkRow{row("cus_new", nil, at)}, LinkCreated, []linkWrite{set}, nil},
		{"new mapping, checkout", authoritativeLink, []linkRow{row("cus_new", nil, at)}, LinkCreated, []linkWrite{set}, nil},
		{"already mapped", webhookLink, []linkRow{row("cus_new", &user, older)}, LinkUnchanged, nil, nil},
		{"customer claimed, webhook", webhookLink, []linkRow{row("cus_new", &other, older)}, "", nil, ErrCustomerClaimed},
		{"customer claimed, checkout", authoritativeLink, []linkRow{row("cus_new", &other, older)}, "", nil, ErrCustomerClaimed},
		{"user on another customer, webhook", webhookLink,
			[]linkRow{row("cus_new", nil, at), row("cus_old", &user, older)}, LinkRefused, nil, nil},
		{"user on an older customer, checkout", authoritativeLink,
			[]linkRow{row("cus_new", nil, at), row("cus_old", &user, older)}, LinkRepointed, []linkWrite{clearOld, set}, nil},
		{"user on a newer customer, checkout", authoritativeLink,
			[]linkRow{row("cus_new", nil, at), row("cus_old", &user, later)}, LinkSuperseded, nil, nil},
		{"same second, greater customer id keeps the user", authoritativeLink,
			[]linkRow{row("cus_new", nil, at), row("cus_zzz", &user, at)}, LinkSuperseded, nil, nil},
		{"same second, smaller customer id loses the user", authoritativeLink,
			[]linkRow{row("cus_new", nil, at), row("cus_aaa", &user, at)}, LinkRepointed,
			[]linkWrite{{customerID: "cus_aaa"}, set}, nil},
		{"same second, the order of the rows does not matter", authoritativeLink,
			[]linkRow{row("cus_zzz", &user, at), row("cus_new", nil, at)}, LinkSuperseded, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, writes, err := decideLink("cus_new", user, at, tc.kind, tc.found)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("decideLink = %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
			if diff := cmp.Diff(tc.writes, writes, cmp.AllowUnexported(linkWrite{})); diff != "" {
				t.Errorf("writes (-want +got):\n%s", diff)
			}
		})
	}
	if _, _, err := decideLink("cus_new", user, at, webhookLink, nil); err == nil {
		t.Error("decideLink with no customer row: no error")
	}
}
