package nosqlstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// Two nodes changing one recovery request at once (two store values on
// one bbolt file; two connections to one PostgreSQL database): every vote
// lands, and a one-time transition happens once.
func TestRecoveryStoreRaces(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) (database.DB, database.DB){
		"bbolt":    func(t *testing.T) (database.DB, database.DB) { db := openDB(t); return db, db },
		"postgres": postgresPair,
	} {
		t.Run(name, func(t *testing.T) {
			da, db := open(t)
			var nodes [2]*nosqlstore.RecoveryStore
			for i, d := range []database.DB{da, db} {
				s, err := nosqlstore.NewRecoveryStore(d)
				if err != nil {
					t.Fatal(err)
				}
				nodes[i] = s
			}
			ctx := context.Background()
			req := policy.RecoveryRequest{ID: "0123456789abcdef01234567", User: "a@example.com", State: policy.RecoveryPending, Quorum: 2, CreatedAt: time.Now()}
			if err := nodes[0].CreateRecovery(ctx, req); err != nil {
				t.Fatal(err)
			}
			if err := nodes[1].CreateRecovery(ctx, req); err == nil {
				t.Fatal("the same id was created twice")
			}
			var wg sync.WaitGroup
			for i := range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := nodes[i%2].UpdateRecovery(ctx, req.ID, func(r *policy.RecoveryRequest) error {
						r.Votes = append(r.Votes, policy.RecoveryVote{Approver: policy.Actor{Name: fmt.Sprint("approver", i)}, Approve: true})
						return nil
					})
					if err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			got, err := nodes[1].Recovery(ctx, req.ID)
			if err != nil || len(got.Votes) != 20 {
				t.Fatalf("%d votes of 20 concurrent ones stored (%v)", len(got.Votes), err)
			}
			spent := errors.New("spent")
			released := 0
			var mu sync.Mutex
			for i := range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := nodes[i%2].UpdateRecovery(ctx, req.ID, func(r *policy.RecoveryRequest) error {
						if r.State == policy.RecoveryReleased {
							return spent
						}
						r.State = policy.RecoveryReleased
						return nil
					})
					mu.Lock()
					defer mu.Unlock()
					if err == nil {
						released++
					} else if !errors.Is(err, spent) {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if released != 1 {
				t.Errorf("released %d times of 10 racing attempts", released)
			}
			if list, err := nodes[0].ListRecoveries(ctx, "a@example.com"); err != nil || len(list) != 1 {
				t.Errorf("list: %d %v", len(list), err)
			}
			if _, err := nodes[0].Recovery(ctx, "ffffffffffffffffffffffff"); !errors.Is(err, policy.ErrNotFound) {
				t.Errorf("unknown id: %v", err)
			}
		})
	}
}
