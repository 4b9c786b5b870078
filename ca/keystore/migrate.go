package keystore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"

	p11 "github.com/miekg/pkcs11"
)

// Importer is a Store that can take in a key made elsewhere.
type Importer interface {
	Store
	// Import stores key under name, never to be extracted again.
	Import(name Name, key crypto.Signer) error
}

// Migrated is what Migrate did with one key file.
type Migrated struct {
	Name     Name
	File     string // the key file
	Location string // where the key is now
	// Already is set when the store held the same key before.
	Already bool
	// Removed is set when the file was deleted.
	Removed bool
}

// Migrate moves the key files of the CA directory dir into the token to:
// each key is imported (sensitive, not extractable), read back through the
// token and used for one signature that its public key verifies; only then,
// and only with remove, is its file deleted. A key the token already holds
// is left as it is; a different key under the same name stops the
// migration. Keys without a file are skipped.
func Migrate(dir string, to Store, remove bool) ([]Migrated, error) {
	imp, ok := to.(Importer)
	if !ok {
		return nil, errors.New("ca: keys can only be migrated into a PKCS#11 token (--kms pkcs11:…)")
	}
	from := Files(dir)
	var out []Migrated
	for _, n := range Names {
		key, err := ReadKeyFile(from.Location(n)) // the key itself, to import
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return out, err
		}
		m := Migrated{Name: n, File: from.Location(n), Location: to.Location(n)}
		switch have, err := to.Key(n); {
		case err == nil && samePublic(have.Public(), key.Public()):
			m.Already = true
		case err == nil:
			return out, fmt.Errorf("ca: %s already holds a different key than %s; nothing was changed for it", m.Location, m.File)
		case !errors.Is(err, fs.ErrNotExist):
			return out, err
		default:
			if err := imp.Import(n, key); err != nil {
				return out, fmt.Errorf("ca: import %s into %s: %w", m.File, m.Location, err)
			}
		}
		if err := checkKeyWorks(to, n, key.Public()); err != nil {
			return out, err
		}
		if remove {
			if err := os.Remove(m.File); err != nil {
				return out, err
			}
			m.Removed = true
		}
		out = append(out, m)
	}
	return out, nil
}

func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// checkKeyWorks reads the named key back from keys and signs with it once.
func checkKeyWorks(keys Store, name Name, pub crypto.PublicKey) error {
	k, err := keys.Key(name)
	if err != nil {
		return err
	}
	if !samePublic(k.Public(), pub) {
		return fmt.Errorf("ca: %s reads back as another key", keys.Location(name))
	}
	digest := sha256.Sum256([]byte("smimeca key check"))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return fmt.Errorf("ca: %s does not sign: %w", keys.Location(name), err)
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		err = rsa.VerifyPKCS1v15(p, crypto.SHA256, digest[:], sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(p, digest[:], sig) {
			err = errors.New("bad signature")
		}
	}
	if err != nil {
		return fmt.Errorf("ca: %s signs, but not as its public key says: %w", keys.Location(name), err)
	}
	return nil
}

// curveOIDs are the named curves of CKA_EC_PARAMS (RFC 5480).
var curveOIDs = map[elliptic.Curve]asn1.ObjectIdentifier{
	elliptic.P256(): {1, 2, 840, 10045, 3, 1, 7},
	elliptic.P384(): {1, 3, 132, 0, 34},
	elliptic.P521(): {1, 3, 132, 0, 35},
}

// Import creates the key's private and public objects in the token, with
// the id and label the CA looks it up by; the private object is sensitive
// and not extractable (the token keeps CKA_LOCAL and CKA_NEVER_EXTRACTABLE
// false: the key was made outside).
func (t *tokenKeys) Import(name Name, key crypto.Signer) error {
	id, err := hex.DecodeString(keyIDs[name])
	if err != nil {
		return err
	}
	label := "smimeca-" + string(name)
	common := func(class uint) []*p11.Attribute {
		return []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, class), p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_ID, id), p11.NewAttribute(p11.CKA_LABEL, label),
		}
	}
	priv := append(common(p11.CKO_PRIVATE_KEY), p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true), p11.NewAttribute(p11.CKA_EXTRACTABLE, false), p11.NewAttribute(p11.CKA_SIGN, true))
	pub := append(common(p11.CKO_PUBLIC_KEY), p11.NewAttribute(p11.CKA_VERIFY, true))
	switch k := key.(type) {
	case *rsa.PrivateKey:
		k.Precompute()
		e := big.NewInt(int64(k.E)).Bytes()
		priv = append(priv, p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_RSA), p11.NewAttribute(p11.CKA_DECRYPT, true),
			p11.NewAttribute(p11.CKA_MODULUS, k.N.Bytes()), p11.NewAttribute(p11.CKA_PUBLIC_EXPONENT, e),
			p11.NewAttribute(p11.CKA_PRIVATE_EXPONENT, k.D.Bytes()),
			p11.NewAttribute(p11.CKA_PRIME_1, k.Primes[0].Bytes()), p11.NewAttribute(p11.CKA_PRIME_2, k.Primes[1].Bytes()),
			p11.NewAttribute(p11.CKA_EXPONENT_1, k.Precomputed.Dp.Bytes()), p11.NewAttribute(p11.CKA_EXPONENT_2, k.Precomputed.Dq.Bytes()),
			p11.NewAttribute(p11.CKA_COEFFICIENT, k.Precomputed.Qinv.Bytes()))
		pub = append(pub, p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_RSA), p11.NewAttribute(p11.CKA_ENCRYPT, true),
			p11.NewAttribute(p11.CKA_MODULUS, k.N.Bytes()), p11.NewAttribute(p11.CKA_PUBLIC_EXPONENT, e))
	case *ecdsa.PrivateKey:
		oid, ok := curveOIDs[k.Curve]
		if !ok {
			return fmt.Errorf("unsupported curve %s", k.Curve.Params().Name)
		}
		params, _ := asn1.Marshal(oid)
		d, err := k.Bytes()
		if err != nil {
			return err
		}
		pt, err := k.PublicKey.Bytes()
		if err != nil {
			return err
		}
		point, _ := asn1.Marshal(pt)
		priv = append(priv, p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC), p11.NewAttribute(p11.CKA_EC_PARAMS, params), p11.NewAttribute(p11.CKA_VALUE, d))
		pub = append(pub, p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_EC), p11.NewAttribute(p11.CKA_EC_PARAMS, params), p11.NewAttribute(p11.CKA_EC_POINT, point))
	default:
		return fmt.Errorf("unsupported key type %T", key)
	}
	return t.withSession(func(ctx *p11.Ctx, s p11.SessionHandle) error {
		h, err := ctx.CreateObject(s, priv)
		if err != nil {
			return err
		}
		if _, err := ctx.CreateObject(s, pub); err != nil {
			ctx.DestroyObject(s, h)
			return err
		}
		return nil
	})
}

// withSession runs f in a read-write session of the token, logged in. The
// module is already initialised by the kms store: its C_Initialize answer
// says so, and the module stays initialised for it.
func (t *tokenKeys) withSession(f func(*p11.Ctx, p11.SessionHandle) error) error {
	ctx := p11.New(t.module)
	if ctx == nil {
		return fmt.Errorf("cannot load %s", t.module)
	}
	defer ctx.Destroy()
	if err := ctx.Initialize(); err != nil && !errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return err
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, slot := range slots {
		ti, err := ctx.GetTokenInfo(slot)
		if err != nil || ti.Label != t.token {
			continue
		}
		s, err := ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return err
		}
		defer ctx.CloseSession(s)
		// The kms store's own session is logged in already, and login state
		// is per application: CKR_USER_ALREADY_LOGGED_IN is the normal answer.
		if err := ctx.Login(s, p11.CKU_USER, t.pin); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
			return err
		}
		return f(ctx, s)
	}
	return fmt.Errorf("no token labelled %q", t.token)
}
