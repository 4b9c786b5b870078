// Package storetest is the conformance suite of policy's stores: Run checks
// every behaviour the rules rely on — one-time challenges, the device
// lifecycle and its tombstone, the inventory, revocation ending enrolment,
// renewal once, identity claims — against a backend, including what two
// nodes on one database must not both win. Each backend's tests call it
// (nanomdm's habit: one suite, every storage).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/policy"
)

// Opener returns two handles on one new, empty database: two nodes.
type Opener func(t *testing.T) (a, b policy.Store)

// Run runs the suite against the stores open returns.
func Run(t *testing.T, open Opener) {
	for _, c := range []struct {
		name string
		run  func(t *testing.T, a, b policy.Store)
	}{
		{"ChallengeLifecycle", challengeLifecycle},
		{"ChallengePaysForOneCertificate", challengeOnce},
		{"ChallengeRaceAcrossNodes", challengeRace},
		{"RevocationEndsTheLiveChallenge", revocationEndsChallenge},
		{"RetirementIsATombstone", retirement},
		{"RenewalOnce", renewalOnce},
		{"InventoryAndRegistry", inventory},
		{"IdentityClaimRaceAcrossNodes", identityRace},
		{"UpdateNeverUndoesARetirement", updateDevice},
		{"OneLeaseHolderAcrossNodes", leases},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := open(t)
			c.run(t, a, b)
		})
	}
}

var ctx = context.Background()

func register(t *testing.T, s policy.Store, user, id string) {
	t.Helper()
	if err := s.PutDevice(ctx, policy.Device{User: user, ID: id, State: policy.DeviceActive, CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
}

func challenge(t *testing.T, s policy.Store, user, id, hash string) {
	t.Helper()
	now := time.Now().UTC()
	if err := s.PutChallenge(ctx, []byte(hash), policy.Challenge{User: user, Device: id, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
}

func issued(serial, user, id string) policy.Issued {
	return policy.Issued{Serial: serial, User: user, Device: id, IssuedAt: time.Now().UTC(), NotAfter: time.Now().Add(time.Hour).UTC()}
}

func wantReason(t *testing.T, err error, r policy.Reason) {
	t.Helper()
	if re, ok := policy.IsReject(err); !ok || re.Reason != r {
		t.Fatalf("err = %v, want %s", err, r)
	}
}

// A device has one live challenge: a new one replaces it, DeleteChallenge
// ends it, and none is stored for a device that is not active.
func challengeLifecycle(t *testing.T, s, _ policy.Store) {
	register(t, s, "a@example.com", "d")
	challenge(t, s, "a@example.com", "d", "hash-1")
	if c, err := s.Challenge(ctx, []byte("hash-1")); err != nil || c.User != "a@example.com" || c.Device != "d" || !c.ConsumedAt.IsZero() {
		t.Fatalf("stored challenge: %+v %v", c, err)
	}
	challenge(t, s, "a@example.com", "d", "hash-2")
	if _, err := s.Challenge(ctx, []byte("hash-1")); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("the replaced challenge: %v", err)
	}
	if err := s.DeleteChallenge(ctx, "a@example.com", "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Challenge(ctx, []byte("hash-2")); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("the deleted challenge: %v", err)
	}
	if err := s.DeleteChallenge(ctx, "a@example.com", "d"); err != nil {
		t.Fatalf("deleting no challenge: %v", err)
	}
	err := s.PutChallenge(ctx, []byte("hash-3"), policy.Challenge{User: "a@example.com", Device: "nobody", ExpiresAt: time.Now().Add(time.Hour)})
	if !errors.Is(err, policy.ErrInactiveDevice) {
		t.Fatalf("a challenge for an unregistered device: %v", err)
	}
}

// A challenge pays for one certificate; then it reads as used, with what
// it paid for.
func challengeOnce(t *testing.T, s, _ policy.Store) {
	register(t, s, "a@example.com", "d")
	challenge(t, s, "a@example.com", "d", "hash")
	c := policy.Commit{Challenge: []byte("hash"), At: time.Now().UTC(), TransactionID: "tx", KeySHA256: "k"}
	if err := s.RecordIssued(ctx, issued("100", "a@example.com", "d"), c); err != nil {
		t.Fatal(err)
	}
	wantReason(t, s.RecordIssued(ctx, issued("101", "a@example.com", "d"), c), policy.ReasonChallengeUsed)
	if _, err := s.IssuedBySerial(ctx, "101"); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("the refused issuance was stored: %v", err)
	}
	used, err := s.Challenge(ctx, []byte("hash"))
	if err != nil || used.ConsumedAt.IsZero() || used.Serial != "100" || used.TransactionID != "tx" {
		t.Fatalf("the used challenge: %+v %v", used, err)
	}
}

// Two nodes racing one challenge: exactly one certificate, every round.
// (A PostgreSQL store whose transactions do not conflict on the
// challenge's row records two.)
func challengeRace(t *testing.T, a, b policy.Store) {
	register(t, a, "a@example.com", "d")
	for round := 0; round < 15; round++ {
		hash := fmt.Sprintf("race-%d", round)
		challenge(t, a, "a@example.com", "d", hash)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < 6; i++ {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Add(1)
			go func(i int, s policy.Store) {
				defer wg.Done()
				err := s.RecordIssued(ctx, issued(fmt.Sprintf("%d%02d", round+1, i), "a@example.com", "d"), policy.Commit{Challenge: []byte(hash), At: time.Now().UTC()})
				if err == nil {
					wins.Add(1)
				} else if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonChallengeUsed {
					t.Errorf("a losing issuance: %v", err)
				}
			}(i, s)
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d certificates from one challenge", round, n)
		}
	}
}

// Revoking a certificate deletes its device's live challenge in the same
// transaction.
func revocationEndsChallenge(t *testing.T, s, b policy.Store) {
	register(t, s, "a@example.com", "d")
	if err := s.RecordIssued(ctx, issued("200", "a@example.com", "d"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	challenge(t, s, "a@example.com", "d", "live")
	if err := b.RevokeIssued(ctx, "200", ca.Record{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Challenge(ctx, []byte("live")); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("the live challenge after the revocation: %v", err)
	}
	wantReason(t, s.RecordIssued(ctx, issued("201", "a@example.com", "d"), policy.Commit{Challenge: []byte("live"), At: time.Now()}), policy.ReasonChallengeUsed)
}

// A retired device takes no challenge and no certificate, on any node, and
// its certificates can no longer be renewed.
func retirement(t *testing.T, a, b policy.Store) {
	register(t, a, "a@example.com", "d")
	if err := a.RecordIssued(ctx, issued("300", "a@example.com", "d"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	challenge(t, a, "a@example.com", "d", "before")
	d, err := a.Device(ctx, "a@example.com", "d")
	if err != nil {
		t.Fatal(err)
	}
	d.State, d.RetiredAt = policy.DeviceRetired, time.Now().UTC()
	if err := a.RetireDevice(ctx, d, []policy.Revocation{{Serial: "300"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.RetireDevice(ctx, d, nil); !errors.Is(err, policy.ErrInactiveDevice) {
		t.Fatalf("retired twice: %v", err)
	}
	if _, err := b.Challenge(ctx, []byte("before")); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("the challenge after the retirement: %v", err)
	}
	if err := b.PutChallenge(ctx, []byte("after"), policy.Challenge{User: "a@example.com", Device: "d", ExpiresAt: time.Now().Add(time.Hour)}); !errors.Is(err, policy.ErrInactiveDevice) {
		t.Fatalf("a challenge for a retired device: %v", err)
	}
	if err := b.RecordIssued(ctx, issued("301", "a@example.com", "d"), policy.Commit{}); !errors.Is(err, policy.ErrInactiveDevice) {
		t.Fatalf("an issuance to a retired device: %v", err)
	}
	wantReason(t, b.RecordIssued(ctx, issued("302", "a@example.com", "d"), policy.Commit{Supersedes: "300", Unregistered: true}), policy.ReasonRenewalNotAuthorized)
	got, err := b.Device(ctx, "a@example.com", "d")
	if err != nil || got.State != policy.DeviceRetired {
		t.Fatalf("the retired device reads %+v %v", got, err)
	}
}

// A certificate is renewed once, whichever node renews it.
func renewalOnce(t *testing.T, a, b policy.Store) {
	register(t, a, "a@example.com", "d")
	if err := a.RecordIssued(ctx, issued("400", "a@example.com", "d"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i, s := range []policy.Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.RecordIssued(ctx, issued(fmt.Sprint(401+i), "a@example.com", "d"), policy.Commit{Supersedes: "400"}) == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Fatalf("%d renewals of one certificate", n)
	}
}

// The inventory lists a device's certificates newest first, by user and
// device (ids are per user), and the registry lists a user's devices.
func inventory(t *testing.T, a, b policy.Store) {
	register(t, a, "a@example.com", "phone")
	register(t, b, "a@example.com", "tablet")
	register(t, a, "b@example.com", "phone")
	for i, dev := range []string{"phone", "phone", "tablet"} {
		if err := a.RecordIssued(ctx, issued(fmt.Sprint(500+i), "a@example.com", dev), policy.Commit{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.RecordIssued(ctx, issued("510", "b@example.com", "phone"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	phone, err := b.ListIssued(ctx, policy.Filter{User: "a@example.com", Device: "phone"})
	if err != nil || len(phone) != 2 || phone[0].Serial != "501" || phone[1].Serial != "500" {
		t.Fatalf("alice's phone: %+v %v", phone, err)
	}
	if all, err := b.ListIssued(ctx, policy.Filter{User: "a@example.com"}); err != nil || len(all) != 3 {
		t.Fatalf("alice's certificates: %d, %v", len(all), err)
	}
	devs, err := b.ListDevices(ctx, "a@example.com")
	if err != nil || len(devs) != 2 || devs[0].ID != "phone" || devs[1].ID != "tablet" {
		t.Fatalf("alice's devices: %+v %v", devs, err)
	}
	if r, err := a.IssuedBySerial(ctx, "510"); err != nil || r.User != "b@example.com" {
		t.Fatalf("by serial: %+v %v", r, err)
	}
}

// Of two nodes claiming one identity at once, one wins.
func identityRace(t *testing.T, a, b policy.Store) {
	for round := 0; round < 10; round++ {
		key := fmt.Sprintf("cert:%d", round)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i, s := range []policy.Store{a, b, a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok, err := s.SwapIdentityClaim(ctx, key, nil, policy.IdentityClaim{User: fmt.Sprintf("u%d@example.com", i), Device: "d", At: time.Now().UTC().Truncate(time.Second)})
				if err != nil {
					t.Error(err)
				} else if ok {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if n := wins.Load(); n != 1 {
			t.Fatalf("round %d: %d nodes claimed one identity", round, n)
		}
	}
}

// An update of an active device never undoes a retirement that came first.
func updateDevice(t *testing.T, a, b policy.Store) {
	register(t, a, "a@example.com", "d")
	d, err := a.Device(ctx, "a@example.com", "d")
	if err != nil {
		t.Fatal(err)
	}
	d.UpdatedBy = "rekey"
	if err := b.UpdateDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.Device(ctx, "a@example.com", "d"); got.UpdatedBy != "rekey" {
		t.Fatalf("the update was not stored: %+v", got)
	}
	retired := d
	retired.State, retired.RetiredAt = policy.DeviceRetired, time.Now().UTC()
	if err := a.RetireDevice(ctx, retired, nil); err != nil {
		t.Fatal(err)
	}
	d.UpdatedBy = "late rekey"
	if err := b.UpdateDevice(ctx, d); !errors.Is(err, policy.ErrInactiveDevice) {
		t.Fatalf("an update of a retired device: %v", err)
	}
	if got, _ := a.Device(ctx, "a@example.com", "d"); got.State != policy.DeviceRetired || got.UpdatedBy == "late rekey" {
		t.Fatalf("the retirement was undone: %+v", got)
	}
	if err := b.PutChallenge(ctx, []byte("after"), policy.Challenge{User: "a@example.com", Device: "d", ExpiresAt: time.Now().Add(time.Hour)}); !errors.Is(err, policy.ErrInactiveDevice) {
		t.Fatalf("the device came back active: %v", err)
	}
}

// leases: of two nodes racing for a free lease one wins; the holder renews
// it, the other cannot take it before it expires and can after.
func leases(t *testing.T, a, b policy.Store) {
	la, okA := a.(policy.Leases)
	lb, okB := b.(policy.Leases)
	if !okA || !okB {
		t.Skip("the store keeps no leases")
	}
	now := time.Now().UTC()
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i, l := range []policy.Leases{la, lb, la, lb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := l.TryLease(ctx, "feed", fmt.Sprintf("node-%d", i), time.Minute, now)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d holders took one free lease", wins.Load())
	}
	holder := ""
	for i, l := range []policy.Leases{la, lb, la, lb} {
		if ok, _ := l.TryLease(ctx, "feed", fmt.Sprintf("node-%d", i), time.Minute, now.Add(time.Second)); ok {
			holder = fmt.Sprintf("node-%d", i)
		}
	}
	if holder == "" {
		t.Fatal("the holder could not renew its lease")
	}
	if ok, _ := lb.TryLease(ctx, "feed", "newcomer", time.Minute, now.Add(30*time.Second)); ok {
		t.Error("a lease was taken before it expired")
	}
	if ok, err := lb.TryLease(ctx, "feed", "newcomer", time.Minute, now.Add(2*time.Minute)); !ok || err != nil {
		t.Errorf("an expired lease could not be taken: %v", err)
	}
	if ok, _ := la.TryLease(ctx, "other", "node-0", time.Minute, now); !ok {
		t.Error("leases of different names are not independent")
	}
}
