package nosqlstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

func openDB(t *testing.T) database.DB {
	t.Helper()
	db, err := datastore.OpenBolt(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db.DB.DB
}

func open(t *testing.T) *nosqlstore.Store {
	t.Helper()
	s, err := nosqlstore.New(openDB(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func register(t *testing.T, s *nosqlstore.Store, user, id string) {
	t.Helper()
	if err := s.PutDevice(context.Background(), policy.Device{User: user, ID: id, State: policy.DeviceActive, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func issued(serial, user, device string) policy.Issued {
	return policy.Issued{Serial: serial, User: user, Device: device, IssuedAt: time.Now()}
}

// Concurrent enrolments of one device must all land in its chain, and
// devices are per user: alice's and bob's "iphone-1" are two devices.
func TestConcurrentRecordsOfOneDevice(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	register(t, s, "a@example.com", "dev")
	register(t, s, "b@example.com", "dev")
	const n = 50
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := s.RecordIssued(ctx, issued(fmt.Sprint(1000+i), "a@example.com", "dev"), policy.Commit{}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	list, err := s.ListIssued(ctx, policy.Filter{User: "a@example.com", Device: "dev"})
	if err != nil || len(list) != n {
		t.Fatalf("%d records, %v; want %d", len(list), err, n)
	}
	seen := map[string]bool{}
	for _, r := range list {
		if seen[r.Serial] {
			t.Fatalf("serial %s twice in the chain", r.Serial)
		}
		seen[r.Serial] = true
	}
	for i := 0; i < n; i++ {
		r, err := s.IssuedBySerial(ctx, fmt.Sprint(1000+i))
		if err != nil || r.Device != "dev" {
			t.Fatalf("serial %d: %+v %v", 1000+i, r, err)
		}
	}
	if _, err := s.IssuedBySerial(ctx, "1"); err != policy.ErrNotFound {
		t.Errorf("unknown serial: %v", err)
	}
	if err := s.RecordIssued(ctx, issued("7", "b@example.com", "dev"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	bob, _ := s.ListIssued(ctx, policy.Filter{User: "b@example.com", Device: "dev"})
	alice, _ := s.ListIssued(ctx, policy.Filter{User: "a@example.com"})
	all, _ := s.ListIssued(ctx, policy.Filter{})
	if len(bob) != 1 || len(alice) != n || len(all) != n+1 {
		t.Errorf("bob %d, alice %d, all %d", len(bob), len(alice), len(all))
	}
	if _, err := s.ListIssued(ctx, policy.Filter{Device: "dev"}); err == nil {
		t.Error("a device filter without its user was accepted (device ids are per user)")
	}
}

// A challenge pays for one certificate: of concurrent issuances using it
// exactly one is recorded; the others store nothing and are told it was
// used. The challenge then reads as used.
func TestRecordIssuedUsesTheChallengeOnce(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	register(t, s, "a@example.com", "d")
	hash := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now().UTC()
	if err := s.PutChallenge(ctx, hash, policy.Challenge{User: "a@example.com", Device: "d", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = s.RecordIssued(ctx, issued(fmt.Sprint(500+i), "a@example.com", "d"), policy.Commit{Challenge: hash, At: now})
		}(i)
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		_, lookupErr := s.IssuedBySerial(ctx, fmt.Sprint(500+i))
		if err == nil {
			won++
			if lookupErr != nil {
				t.Errorf("winner %d not recorded: %v", i, lookupErr)
			}
			continue
		}
		if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonChallengeUsed {
			t.Errorf("loser %d: %v, want ReasonChallengeUsed", i, err)
		}
		if lookupErr != policy.ErrNotFound {
			t.Errorf("loser %d was recorded: %v", i, lookupErr)
		}
	}
	if won != 1 {
		t.Fatalf("%d issuances used one challenge", won)
	}
	c, err := s.Challenge(ctx, hash)
	if err != nil || c.ConsumedAt.IsZero() || c.User != "a@example.com" {
		t.Fatalf("challenge after use: %+v %v", c, err)
	}
	// Used challenges are purged like expired ones.
	if n, err := s.PurgeChallenges(now.Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	if _, err := s.Challenge(ctx, hash); err != policy.ErrNotFound {
		t.Errorf("after purge: %v", err)
	}
}

// A record written before used challenges moved to their own table (still
// in the challenge table, with ConsumedAt set) is refused as used.
func TestLegacyConsumedChallengeIsRefused(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	register(t, s, "a@example.com", "d")
	hash := []byte("legacy-challenge-hash-0123456789")
	now := time.Now().UTC()
	if err := s.PutChallenge(ctx, hash, policy.Challenge{User: "a@example.com", Device: "d", ExpiresAt: now.Add(time.Hour), ConsumedAt: now}); err != nil {
		t.Fatal(err)
	}
	err := s.RecordIssued(ctx, issued("9", "a@example.com", "d"), policy.Commit{Challenge: hash, At: now})
	if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonChallengeUsed {
		t.Fatalf("%v, want ReasonChallengeUsed", err)
	}
	if _, err := s.IssuedBySerial(ctx, "9"); err != policy.ErrNotFound {
		t.Errorf("recorded: %v", err)
	}
}

// Challenges and certificates only for registered, active devices; a
// retirement is a tombstone that every later issuance transaction reads.
func TestRetirementIsATombstone(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	ch := policy.Challenge{User: "a@example.com", Device: "d", ExpiresAt: now.Add(time.Hour)}
	if err := s.PutChallenge(ctx, []byte("h0"), ch); err != policy.ErrInactiveDevice {
		t.Fatalf("challenge for an unregistered device: %v", err)
	}
	if err := s.RecordIssued(ctx, issued("1", "a@example.com", "d"), policy.Commit{}); err != policy.ErrInactiveDevice {
		t.Fatalf("certificate for an unregistered device: %v", err)
	}
	register(t, s, "a@example.com", "d")
	if err := s.PutChallenge(ctx, []byte("h1"), ch); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordIssued(ctx, issued("1", "a@example.com", "d"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	d, _ := s.Device(ctx, "a@example.com", "d")
	d.State = policy.DeviceRetired
	if err := s.RetireDevice(ctx, d, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Challenge(ctx, []byte("h1")); err != policy.ErrNotFound {
		t.Errorf("the live challenge survived the retirement: %v", err)
	}
	if err := s.RetireDevice(ctx, d, nil); err != policy.ErrInactiveDevice {
		t.Errorf("second retirement: %v", err)
	}
	if err := s.RecordIssued(ctx, issued("2", "a@example.com", "d"), policy.Commit{Supersedes: "1"}); err != policy.ErrInactiveDevice {
		t.Fatalf("renewal after retirement: %v", err)
	}
	if _, err := s.IssuedBySerial(ctx, "2"); err != policy.ErrNotFound {
		t.Errorf("refused renewal was recorded: %v", err)
	}
	if err := s.PutChallenge(ctx, []byte("h2"), ch); err != policy.ErrInactiveDevice {
		t.Errorf("challenge after retirement: %v", err)
	}
	// The history stays readable.
	if l, _ := s.ListIssued(ctx, policy.Filter{User: "a@example.com", Device: "d"}); len(l) != 1 {
		t.Errorf("history after retirement: %d records", len(l))
	}
}

// A device has one live challenge: each new one replaces the last, so a
// caller that creates challenges in a loop leaves one row, not a flood.
func TestOneLiveChallengePerDevice(t *testing.T) {
	db := openDB(t)
	s, err := nosqlstore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	register(t, s, "a@example.com", "d")
	register(t, s, "a@example.com", "e")
	now := time.Now().UTC()
	for i := 0; i < 100; i++ {
		if err := s.PutChallenge(ctx, []byte(fmt.Sprintf("hash-%03d", i)), policy.Challenge{User: "a@example.com", Device: "d", ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutChallenge(ctx, []byte("other"), policy.Challenge{User: "a@example.com", Device: "e", ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	rows, err := db.List([]byte("smimeca_challenges"))
	if err != nil || len(rows) != 2 {
		t.Fatalf("%d live challenge rows (%v), want 2 (one per device)", len(rows), err)
	}
	if _, err := s.Challenge(ctx, []byte("hash-098")); err != policy.ErrNotFound {
		t.Errorf("a replaced challenge is still usable: %v", err)
	}
	if _, err := s.Challenge(ctx, []byte("hash-099")); err != nil {
		t.Errorf("the newest challenge: %v", err)
	}
}

// A certificate is renewed once: of renewals racing on one predecessor
// exactly one lands; a later one (a replayed request) stores nothing.
func TestRenewalSupersedesOnce(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	register(t, s, "a@example.com", "d")
	if err := s.RecordIssued(ctx, issued("100", "a@example.com", "d"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	const n = 10
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = s.RecordIssued(ctx, issued(fmt.Sprint(200+i), "a@example.com", "d"), policy.Commit{Supersedes: "100"})
		}(i)
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won++
			continue
		}
		if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonRenewalNotAuthorized {
			t.Errorf("renewal %d: %v, want ReasonRenewalNotAuthorized", i, err)
		}
		if _, err := s.IssuedBySerial(ctx, fmt.Sprint(200+i)); err != policy.ErrNotFound {
			t.Errorf("refused renewal %d recorded", i)
		}
	}
	if won != 1 {
		t.Fatalf("%d renewals of one certificate landed", won)
	}
	// A revoked certificate cannot be renewed either.
	if err := s.RecordIssued(ctx, issued("300", "a@example.com", "d"), policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeIssued(ctx, "300", ca.Record{}); err != nil {
		t.Fatal(err)
	}
	err := s.RecordIssued(ctx, issued("301", "a@example.com", "d"), policy.Commit{Supersedes: "300"})
	if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonRenewalNotAuthorized {
		t.Errorf("renewal of a revoked certificate: %v", err)
	}
}

// countingDB records the bytes each Update writes.
type countingDB struct {
	database.DB
	mu   sync.Mutex
	last int
}

func (c *countingDB) Update(tx *database.Tx) error {
	n := 0
	for _, op := range tx.Operations {
		n += len(op.Key) + len(op.Value) + len(op.CmpValue)
	}
	c.mu.Lock()
	c.last = n
	c.mu.Unlock()
	return c.DB.Update(tx)
}

// A certificate's write costs the same whatever the device's history: the
// 1 000th certificate of a device writes as many bytes as its first (the
// old layout rewrote the device's whole list every time).
func TestWriteCostIsFlat(t *testing.T) {
	cdb := &countingDB{DB: openDB(t)}
	s, err := nosqlstore.New(cdb)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	register(t, s, "a@example.com", "d")
	var first, last int
	for i := 0; i < 1000; i++ {
		// Serials and times of one length, so that only the history could
		// make one write larger than another.
		rec := policy.Issued{Serial: fmt.Sprint(100000 + i), User: "a@example.com", Device: "d", IssuedAt: time.Unix(1800000000, 0).UTC()}
		if err := s.RecordIssued(ctx, rec, policy.Commit{}); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			first = cdb.last
		}
		last = cdb.last
	}
	if last != first {
		t.Errorf("the 1000th write is %d bytes, the 2nd %d: the cost grows with the history", last, first)
	}
}

// A version 1 database (one JSON list per global device id) is migrated:
// every user's device becomes a registered device with its own chain.
func TestMigrateFromVersion1(t *testing.T) {
	db := openDB(t)
	byDevice, serials := []byte("smimeca_issued_by_device"), []byte("smimeca_issued_serials")
	for _, tbl := range [][]byte{byDevice, serials} {
		if err := db.CreateTable(tbl); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().UTC().Add(-time.Hour)
	list := []policy.Issued{
		{Serial: "1", User: "alice@example.com", Device: "iphone-1", IssuedAt: t0},
		{Serial: "2", User: "bob@example.com", Device: "iphone-1", IssuedAt: t0.Add(time.Minute)},
		{Serial: "3", User: "alice@example.com", Device: "iphone-1", IssuedAt: t0.Add(2 * time.Minute), RenewedFrom: "1"},
	}
	b, _ := json.Marshal(list)
	if err := db.Set(byDevice, []byte("iphone-1"), b); err != nil {
		t.Fatal(err)
	}
	s, err := nosqlstore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	alice, _ := s.ListIssued(ctx, policy.Filter{User: "alice@example.com", Device: "iphone-1"})
	bob, _ := s.ListIssued(ctx, policy.Filter{User: "bob@example.com", Device: "iphone-1"})
	if len(alice) != 2 || alice[0].Serial != "3" || len(bob) != 1 {
		t.Fatalf("migrated: alice %+v, bob %+v", alice, bob)
	}
	for _, u := range []string{"alice@example.com", "bob@example.com"} {
		d, err := s.Device(ctx, u, "iphone-1")
		if err != nil || d.State != policy.DeviceActive || d.Identity != nil {
			t.Errorf("%s's device after migration: %+v %v", u, d, err)
		}
	}
	if _, err := db.List(byDevice); !database.IsErrNotFound(err) {
		t.Errorf("the version 1 table is still there: %v", err)
	}
	// Opening again changes nothing.
	if _, err := nosqlstore.New(db); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.ListIssued(ctx, policy.Filter{}); len(again) != 3 {
		t.Errorf("after a second open: %d records", len(again))
	}
}

// listingDB counts full-table reads by table.
type listingDB struct {
	database.DB
	mu    sync.Mutex
	lists map[string]int
}

func (l *listingDB) List(table []byte) ([]*database.Entry, error) {
	l.mu.Lock()
	l.lists[string(table)]++
	l.mu.Unlock()
	return l.DB.List(table)
}

func (l *listingDB) scans() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, v := range l.lists {
		n += v
	}
	return n
}

// One user's devices and certificates are read from that user's rows, not
// found by scanning the registry: with 250 000 devices, listing a user's
// two must not read the other 249 998.
func TestListingOneUserScansNoTable(t *testing.T) {
	ldb := &listingDB{DB: openDB(t), lists: map[string]int{}}
	s, err := nosqlstore.New(ldb)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	register(t, s, "alice@example.com", "iphone")
	register(t, s, "alice@example.com", "ipad")
	register(t, s, "bob@example.com", "iphone")
	register(t, s, "alice@example.com", "iphone") // again: listed once
	for i, r := range []policy.Issued{issued("1", "alice@example.com", "iphone"), issued("2", "alice@example.com", "iphone"), issued("3", "bob@example.com", "iphone")} {
		if err := s.RecordIssued(ctx, r, policy.Commit{}); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	before := ldb.scans()
	devs, err := s.ListDevices(ctx, "alice@example.com")
	if err != nil || len(devs) != 2 || devs[0].ID != "ipad" || devs[1].ID != "iphone" || devs[0].User != "alice@example.com" {
		t.Fatalf("alice's devices: %+v, %v", devs, err)
	}
	certs, err := s.ListIssued(ctx, policy.Filter{User: "alice@example.com"})
	if err != nil || len(certs) != 2 {
		t.Fatalf("alice's certificates: %+v, %v; want 1 and 2", certs, err)
	}
	for _, c := range certs {
		if c.User != "alice@example.com" {
			t.Errorf("bob's certificate %s listed for alice", c.Serial)
		}
	}
	if none, err := s.ListDevices(ctx, "carol@example.com"); err != nil || len(none) != 0 {
		t.Errorf("a user without devices: %+v, %v", none, err)
	}
	if n := ldb.scans() - before; n != 0 {
		t.Errorf("listing one user's devices and certificates scanned %d tables: %v", n, ldb.lists)
	}
	// Every user's: the administrator's query reads the registry.
	if all, err := s.ListDevices(ctx, ""); err != nil || len(all) != 3 {
		t.Errorf("all devices: %d, %v", len(all), err)
	}
	// The labs mode's unregistered devices (one per enrolment) are part
	// of the user's inventory; once the database holds one, listing a
	// user's certificates scans the heads.
	for _, sn := range []string{"4", "5"} {
		if err := s.RecordIssued(ctx, issued(sn, "alice@example.com", policy.StaticDevice+"/"+sn), policy.Commit{Unregistered: true}); err != nil {
			t.Fatal(err)
		}
	}
	if certs, err := s.ListIssued(ctx, policy.Filter{User: "alice@example.com"}); err != nil || len(certs) != 4 {
		t.Errorf("alice's certificates with static enrolments: %d, %v; want 4", len(certs), err)
	}
	if certs, err := s.ListIssued(ctx, policy.Filter{User: "bob@example.com"}); err != nil || len(certs) != 1 {
		t.Errorf("bob's certificates: %d, %v; want 1", len(certs), err)
	}
}

// Devices of one user registered at once by two processes (two stores on
// one database: their in-process locks do not see each other) all land in
// the user's list.
func TestConcurrentRegistrationsOfOneUser(t *testing.T) {
	db := openDB(t)
	var stores []*nosqlstore.Store
	for range 2 {
		s, err := nosqlstore.New(db)
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- stores[i%2].PutDevice(context.Background(), policy.Device{User: "a@example.com", ID: fmt.Sprintf("d%02d", i), State: policy.DeviceActive})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	devs, err := stores[0].ListDevices(context.Background(), "a@example.com")
	if err != nil || len(devs) != n {
		t.Fatalf("%d devices listed (%v), want %d", len(devs), err, n)
	}
}

// A version 2 database (no per-user lists) gets them when opened.
func TestMigrateFromVersion2(t *testing.T) {
	db := openDB(t)
	s, err := nosqlstore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	register(t, s, "alice@example.com", "iphone")
	register(t, s, "alice@example.com", "ipad")
	register(t, s, "bob@example.com", "iphone")
	// Back to version 2: the lists gone, the version number 2.
	if err := db.DeleteTable([]byte("smimeca_user_devices")); err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("smimeca_meta"), []byte("schema"), []byte("2")); err != nil {
		t.Fatal(err)
	}
	if s, err = nosqlstore.New(db); err != nil {
		t.Fatal(err)
	}
	devs, err := s.ListDevices(context.Background(), "alice@example.com")
	if err != nil || len(devs) != 2 {
		t.Fatalf("alice's devices after the migration: %+v, %v", devs, err)
	}
	if v, _ := db.Get([]byte("smimeca_meta"), []byte("schema")); string(v) != "4" {
		t.Errorf("schema %q after the migration, want 4", v)
	}
}

// A version 3 database kept no identity index: opening it indexes every
// active device's identity, so that it stays that device's alone.
func TestMigrateFromVersion3IndexesIdentities(t *testing.T) {
	db := openDB(t)
	s, err := nosqlstore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	is := testpki.NewIssuer(t)
	ident := is.UserCert(t, testpki.RSAKey(t, 2048, 0), testpki.CertOptions{CommonName: "iphone"})
	retired := is.UserCert(t, testpki.RSAKey(t, 2048, 1), testpki.CertOptions{CommonName: "old"})
	ctx := context.Background()
	if err := s.PutDevice(ctx, policy.Device{User: "alice@example.com", ID: "iphone", State: policy.DeviceActive, Identity: ident.Raw}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(ctx, policy.Device{User: "alice@example.com", ID: "old", State: policy.DeviceRetired, Identity: retired.Raw}); err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte("smimeca_meta"), []byte("schema"), []byte("3")); err != nil {
		t.Fatal(err)
	}
	if s, err = nosqlstore.New(db); err != nil {
		t.Fatal(err)
	}
	for _, k := range policy.IdentityKeys(ident) {
		if c, err := s.IdentityClaim(ctx, k); err != nil || c.User != "alice@example.com" || c.Device != "iphone" {
			t.Errorf("claim %s after the migration: %+v %v", k, c, err)
		}
	}
	for _, k := range policy.IdentityKeys(retired) {
		if _, err := s.IdentityClaim(ctx, k); err != policy.ErrNotFound {
			t.Errorf("a retired device's identity was indexed: %v", err)
		}
	}
}

// Claims are compare-and-swap: of two claims from the same state one wins.
func TestIdentityClaimSwap(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a := policy.IdentityClaim{User: "a@example.com", Device: "d", At: time.Now().UTC().Truncate(time.Second)}
	b := policy.IdentityClaim{User: "b@example.com", Device: "d", At: a.At}
	if ok, err := s.SwapIdentityClaim(ctx, "cert:1", nil, a); err != nil || !ok {
		t.Fatalf("first claim: %v %v", ok, err)
	}
	if ok, _ := s.SwapIdentityClaim(ctx, "cert:1", nil, b); ok {
		t.Fatal("a claim over an existing one as if there were none")
	}
	if ok, _ := s.SwapIdentityClaim(ctx, "cert:1", &b, b); ok {
		t.Fatal("a claim over a stale view")
	}
	if ok, err := s.SwapIdentityClaim(ctx, "cert:1", &a, b); err != nil || !ok {
		t.Fatalf("a claim over the current one: %v %v", ok, err)
	}
	if c, _ := s.IdentityClaim(ctx, "cert:1"); c != b {
		t.Errorf("stored claim %+v", c)
	}
}
