package ca

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"sync"

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
