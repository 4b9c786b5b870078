package ca

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"
)

// Record is the CA database's record of a signed certificate (step-ca's
// certificate tables), not yet written. Sign returns it so that the caller
// commits it in the same transaction as its own records of the issuance
// (the consumed challenge, the device inventory): one durable write per
// enrolment instead of three, and no state where one is stored without the
// others.
type Record struct {
	ops []*database.TxEntry
}

// Ops returns the database operations that write the record, for a
// transaction on the database the Authority was opened on.
func (r Record) Ops() []*database.TxEntry { return r.ops }

// Issuance is a signed certificate and its record, not yet stored.
type Issuance struct {
	// Chain is the leaf followed by the issuing chain.
	Chain []*x509.Certificate
	// Record must be committed before the certificate is handed out.
	Record Record
}

// deferringDB is step-ca's database with one change: a certificate whose
// serial Sign registered is not written when step-ca stores it; its
// operations are captured for Sign's caller instead. Every other method,
// including the optional interfaces step-ca looks for (CRL storage,
// revocation), is *db.DB's.
type deferringDB struct {
	*db.DB
	pending sync.Map // decimal serial → *Record
	// crlStored is what the last StoreCRL did: true when the CRL it was
	// given is the one stored. generateCRL reads it after its own
	// generation, under Authority.crlMu; step-ca's periodic regeneration
	// may store in between, but only after that generation (step-ca runs
	// one at a time), from a list at least as new, so its report is as
	// good an answer.
	crlStored atomic.Bool
}

// StoreCertificateChain captures the write of a registered serial and
// stores any other certificate as step-ca would.
func (d *deferringDB) StoreCertificateChain(p provisioner.Interface, chain ...*x509.Certificate) error {
	if len(chain) > 0 {
		if v, ok := d.pending.Load(chain[0].SerialNumber.String()); ok {
			rec := &recorder{}
			if err := (&db.DB{DB: rec}).StoreCertificateChain(p, chain...); err != nil {
				return err
			}
			v.(*Record).ops = rec.ops
			return nil
		}
	}
	return d.DB.StoreCertificateChain(p, chain...)
}

// crlTable and crlKey are where step-ca keeps the current CRL
// (db.CertificateRevocationListInfo as JSON).
var (
	crlTable = []byte("x509_crl")
	crlKey   = []byte("crl")
)

// StoreCRL stores a newly generated CRL only if it is newer than the stored
// one, with a compare-and-swap: nodes sharing the database may generate
// at the same time (each from the number it read), and the number of the
// CRL served must only ever grow. A CRL that lost the race is dropped,
// never served; crlStored tells the generation which happened.
func (d *deferringDB) StoreCRL(info *db.CertificateRevocationListInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	cur, err := d.DB.DB.Get(crlTable, crlKey)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("ca: read stored CRL: %w", err)
	}
	if cur != nil {
		var have db.CertificateRevocationListInfo
		if json.Unmarshal(cur, &have) == nil && have.Number >= info.Number {
			d.crlStored.Store(false)
			return nil
		}
	}
	_, swapped, err := d.DB.DB.CmpAndSwap(crlTable, crlKey, cur, b)
	d.crlStored.Store(err == nil && swapped)
	if err != nil {
		return fmt.Errorf("ca: store CRL: %w", err)
	}
	return nil
}

// recorder is a database.DB whose Update keeps the operations instead of
// running them. step-ca's StoreCertificateChain writes through one Update;
// every other method is the nil embedded interface's and panics, so that a
// step-ca version that wrote any other way fails TestSignDefersTheRecord
// instead of writing behind the caller's transaction.
type recorder struct {
	database.DB
	ops []*database.TxEntry
}

func (r *recorder) Update(tx *database.Tx) error {
	r.ops = append(r.ops, tx.Operations...)
	return nil
}

// serialLimit bounds leaf serials: 128 random bits, as x509util chooses them
// (the CA/Browser Forum's S/MIME requirements ask for at least 64).
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// newSerial returns a random positive serial number.
func newSerial() (*big.Int, error) {
	for {
		sn, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("ca: serial number: %w", err)
		}
		if sn.Sign() > 0 {
			return sn, nil
		}
	}
}

// revokedCertsTable is step-ca's table of revoked X.509 certificates
// (db.RevokedCertificateInfo by decimal serial). TestRevocationRecord
// checks that step-ca reads what RevocationRecord writes.
var revokedCertsTable = []byte("revoked_x509_certs")

// RevocationRecord returns the CA database's record of revoking the
// certificate with the decimal serial at time at, not yet written, so that
// the caller commits it in the same transaction as its own change (a
// device's retirement, a renewal that supersedes its predecessor). The write
// is a compare-and-swap from absent: a certificate already revoked keeps its
// first revocation. The record also marks the CRL stale: once committed, the
// next CRL read of any node publishes it.
func (a *Authority) RevocationRecord(serial string, reasonCode int, reason string, at time.Time) (Record, error) {
	if !validReason(reasonCode) {
		return Record{}, fmt.Errorf("ca: revocation reason code %d is not one of 0,1,3,4,5", reasonCode)
	}
	crt, err := a.Certificate(serial)
	if err != nil {
		return Record{}, err
	}
	b, err := json.Marshal(&db.RevokedCertificateInfo{
		Serial: serial, ReasonCode: reasonCode, Reason: reason, RevokedAt: at.UTC(),
		ExpiresAt: crt.NotAfter, MTLS: true,
	})
	if err != nil {
		return Record{}, fmt.Errorf("ca: revocation record: %w", err)
	}
	return Record{ops: []*database.TxEntry{{
		Bucket: revokedCertsTable, Key: []byte(serial), CmpValue: nil, Value: b, Cmd: database.CmpAndSwap,
	}, crlPendingOp()}}, nil
}

// crlStateTable holds crlPendingKey: a random token written in every
// transaction that revokes, and cleared by the CRL regeneration that
// follows if no other revocation wrote a new one meanwhile. Every node
// sharing the database reads it before serving the CRL, so a revocation
// committed through any node is in the CRL every node serves next, and a
// crash between the commit and the regeneration loses nothing.
var (
	crlStateTable = []byte("smimeca_crl_state")
	crlPendingKey = []byte("pending")
)

func crlPendingOp() *database.TxEntry {
	token := make([]byte, 16)
	rand.Read(token)
	return &database.TxEntry{Bucket: crlStateTable, Key: crlPendingKey, Value: []byte(hex.EncodeToString(token)), Cmd: database.Set}
}

// RefreshCRL regenerates the CRL, after revocations committed through
// RevocationRecord.
func (a *Authority) RefreshCRL() error {
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	_, err := a.generateCRL()
	return err
}

// Applied reports, once the record was committed, whether every
// compare-and-swap in it took effect: false for a revocation that found the
// certificate already revoked (its first revocation stays).
func (r Record) Applied() bool {
	for _, op := range r.ops {
		if op.Cmd == database.CmpAndSwap && !op.Swapped {
			return false
		}
	}
	return true
}
