// Package keystore keeps the CA's private keys and uses them without
// letting them out: 0600 PEM files in the CA directory (Files), or a
// PKCS#11 token through go.step.sm/crypto/kms (keys generated inside,
// sensitive, never extractable), behind one narrow interface (Store:
// Key, Create, Delete, Location); Migrate moves key files into a token.
// It knows the keys' names, not what they sign.
package keystore

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/pkcs11"
	"go.step.sm/crypto/kms/uri"
	"go.step.sm/crypto/pemutil"

	"github.com/smimeca/smimeca/ca/keystore/libcrypto"
	"github.com/smimeca/smimeca/internal/atomicfile"
)

// Name names one of the CA's private keys in a Store.
type Name string

// The CA's private keys.
const (
	Root      Name = "root"      // signs the issuing CA and the root's CRL
	Issuing   Name = "issuing"   // signs leaves, CRLs and the CA's own certificates
	RA        Name = "ra"        // SCEP RA: decrypts requests, signs CertRep (RSA)
	Profile   Name = "profile"   // signs configuration profiles
	OCSP      Name = "ocsp"      // signs OCSP responses (delegated responder)
	Connector Name = "connector" // PFX connector: RSA-OAEP-decrypts import passwords
	API       Name = "api"       // the gRPC API's own CA: server and client credentials
)

// Names lists every key a Store holds for the CA, root first.
var Names = []Name{Root, Issuing, RA, Profile, OCSP, Connector, API}

// Spec is the kind of key Store.Create makes.
type Spec struct {
	Type string // TypeEC or TypeRSA
	// Bits is the RSA modulus size; the curve for EC: 256 (P-256) or 384 (P-384).
	Bits int
}

// Store is where the CA's private keys are made and used: files under the
// CA directory (Files) or a PKCS#11 token (Open with a pkcs11:
// URI). A key a token creates never leaves it.
type Store interface {
	// Key returns the named key. The error wraps fs.ErrNotExist when the
	// store has no key of that name.
	Key(name Name) (crypto.Signer, error)
	// Create makes a new key under name. It never replaces one: the error
	// wraps fs.ErrExist when the store holds a key of that name.
	Create(name Name, spec Spec) (crypto.Signer, error)
	// Delete removes the named key, if there is one.
	Delete(name Name) error
	// Location says where the named key is kept, for messages: a file path
	// or a pkcs11: URI (never a PIN).
	Location(name Name) string
	// Close releases the store (a token's sessions).
	Close() error
}

// KMSSoft is the --kms value that keeps keys in 0600 PEM files in the CA
// directory, as step-ca's softkms does.
const KMSSoft = "softkms"

// Open opens the key store kms names: "" or KMSSoft for files in dir,
// or a pkcs11: URI (RFC 7512; module-path, token, pin-source or pin-value,
// max-sessions) for a token, whose PIN may also come from pin (e.g.
// $SMIMECA_KMS_PIN). Errors say which URI failed and what to check.
func Open(kms, dir, pin string) (Store, error) {
	if kms == "" || kms == KMSSoft {
		return Files(dir), nil
	}
	if !strings.HasPrefix(kms, "pkcs11:") {
		return nil, fmt.Errorf("ca: --kms %q is neither %s nor a pkcs11: URI", kms, KMSSoft)
	}
	return openPKCS11(kms, pin)
}

// Files is the Store of PEM files (PKCS#8, mode 0600) in a CA
// directory; a key file readable by group or others is refused.
type Files string

// keyFiles are the files of Files, named as the CA has always named them.
var keyFiles = map[Name]string{
	Root: "root_ca.key", Issuing: "intermediate_ca.key", RA: "scep_ra.key",
	Profile: "profile_signer.key", OCSP: "ocsp_signer.key", Connector: "pfx_connector.key", API: "api_ca.key",
}

// Key types of Spec.
const (
	TypeEC  = "EC"
	TypeRSA = "RSA"
)

// keyFileMode is the permission of every private key file.
const keyFileMode = 0o600

// WriteKeyFile writes a private key as PKCS#8 PEM to path with mode 0600,
// through a synced temporary file.
func WriteKeyFile(path string, key crypto.PrivateKey) error {
	block, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
	if err != nil {
		return fmt.Errorf("ca: serialize key for %s: %w", filepath.Base(path), err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(block), keyFileMode); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return nil
}

// Location returns the key's file path.
func (d Files) Location(name Name) string { return filepath.Join(string(d), keyFiles[name]) }

// Key reads the named key file; an RSA key's operations go through
// OpenSSL in a build with the libcrypto tag (libcrypto.Wrap).
func (d Files) Key(name Name) (crypto.Signer, error) {
	key, err := ReadKeyFile(d.Location(name))
	if err != nil {
		return nil, err
	}
	return libcrypto.Wrap(key)
}

// Create generates a key in memory and writes it to its file (atomically,
// mode 0600).
func (d Files) Create(name Name, spec Spec) (crypto.Signer, error) {
	if _, err := os.Stat(d.Location(name)); err == nil {
		return nil, existsError(d.Location(name))
	}
	var key crypto.Signer
	var err error
	switch spec.Type {
	case TypeEC:
		key, err = keyutil.GenerateSigner("EC", fmt.Sprintf("P-%d", spec.Bits), 0)
	default:
		key, err = keyutil.GenerateSigner("RSA", "", spec.Bits)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: generate %s key: %w", name, err)
	}
	if err := WriteKeyFile(d.Location(name), key); err != nil {
		return nil, err
	}
	return libcrypto.Wrap(key)
}

// Delete removes the key's file.
func (d Files) Delete(name Name) error {
	if err := os.Remove(d.Location(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Close does nothing: files need no release.
func (d Files) Close() error { return nil }

// existsError refuses to make a key where one is: a store holding a CA's
// key without its certificate is restored or replaced by an operator, never
// overwritten at start-up.
func existsError(where string) error {
	return fmt.Errorf("ca: %s already holds a key but its certificate is missing: restore the certificate from the backup of DATA/ca, or remove the key if it is truly unused: %w", where, fs.ErrExist)
}

// ReadKeyFile reads a PEM private key, refusing a file others may read.
func ReadKeyFile(path string) (crypto.Signer, error) {
	if fi, err := os.Stat(path); err != nil {
		return nil, err
	} else if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ca: %s is readable by group or others (mode %04o); run chmod 600 on it", path, fi.Mode().Perm())
	}
	k, err := pemutil.Read(path)
	if err != nil {
		return nil, fmt.Errorf("ca: read key %s: %w", path, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca: key %s is not a signing key", path)
	}
	return signer, nil
}

// tokenKeys is the Store of a PKCS#11 token, through step-ca's kms
// (crypto11 underneath, which pools the token's sessions: concurrent
// operations do not wait for one another).
type tokenKeys struct {
	kms *pkcs11.PKCS11
	uri string // redacted
	// module, token and pin open the raw session Import needs.
	module, token, pin string
}

// keyIDs are the CKA_IDs of the CA's keys in a token, beside their labels
// (CKA_LABEL smimeca-<name>): step-ca's kms wants both when it creates.
var keyIDs = map[Name]string{
	Root: "5301", Issuing: "5302", RA: "5303", Profile: "5304", OCSP: "5305", Connector: "5306", API: "5307",
}

// TokenKeyURI is the pkcs11: URI of the named key inside a token.
func TokenKeyURI(name Name) string {
	return "pkcs11:id=%" + keyIDs[name][:2] + "%" + keyIDs[name][2:] + ";object=smimeca-" + string(name)
}

func openPKCS11(raw, pin string) (Store, error) {
	u, err := uri.ParseWithScheme("pkcs11", raw)
	if err != nil {
		return nil, fmt.Errorf("ca: --kms is not a valid pkcs11: URI: %w", err)
	}
	shown := RedactKMS(raw)
	if src := u.Get("pin-source"); src != "" {
		// kms reads pin-source but ignores an unreadable file, which the
		// token then reports as a wrong PIN.
		if _, err := os.ReadFile(src); err != nil {
			return nil, fmt.Errorf("ca: PIN file of %s: %w", shown, err)
		}
	}
	if mod := u.Get("module-path"); mod != "" && strings.ContainsRune(mod, '/') {
		if _, err := os.Stat(mod); err != nil {
			return nil, fmt.Errorf("ca: %s: PKCS#11 module %s: %w (install the HSM vendor's module, or SoftHSM2's: apt-get install softhsm2)", shown, mod, err)
		}
	}
	k, err := pkcs11.New(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: raw, Pin: pin})
	if err != nil {
		msg := err.Error()
		hint := "check module-path, the token label (token=) and that the token is initialised"
		switch {
		case strings.Contains(msg, "CKR_PIN_INCORRECT"), strings.Contains(msg, "CKR_PIN_LEN_RANGE"):
			hint = "the PIN is wrong: fix the pin-source file, pin-value or $SMIMECA_KMS_PIN"
		case strings.Contains(msg, "CKR_PIN_LOCKED"):
			hint = "the token's user PIN is locked: the token's security officer must reset it"
		case strings.Contains(u.Get("module-path"), "softhsm") && os.Getenv("SOFTHSM2_CONF") == "":
			hint = "$SOFTHSM2_CONF is not set, so SoftHSM2 reads /etc/softhsm/softhsm2.conf and its token directory; export SOFTHSM2_CONF=<dir>/softhsm2.conf (make run's: data/softhsm/softhsm2.conf)"
		case strings.Contains(msg, "could not find"), strings.Contains(msg, "no slot"):
			hint = "no such token: check token= (softhsm2-util --show-slots or pkcs11-tool -L lists them)"
		case strings.Contains(msg, "not compiled"), strings.Contains(msg, "cgo"):
			hint = "this smimeca binary was built without cgo and cannot load PKCS#11 modules: rebuild with CGO_ENABLED=1"
		}
		if pin != "" {
			msg = strings.ReplaceAll(msg, pin, "…")
		}
		return nil, fmt.Errorf("ca: open key store %s: %s; %s", shown, msg, hint)
	}
	if pin == "" {
		pin = u.Pin()
	}
	return &tokenKeys{kms: k, uri: shown, module: u.Get("module-path"), token: u.Get("token"), pin: pin}, nil
}

// RedactKMS returns a --kms value without its PIN, for logs and messages:
// a pin-value attribute is replaced wherever the URI carries it, in its path
// (";"-separated) or its query ("&"-separated), whatever its case or
// percent-encoding.
func RedactKMS(raw string) string {
	if !strings.HasPrefix(strings.ToLower(raw), "pkcs11:") {
		return raw
	}
	path, query, hasQuery := strings.Cut(raw, "?")
	out := redactAttrs(path, ";")
	if hasQuery {
		out += "?" + redactAttrs(query, "&")
	}
	return out
}

func redactAttrs(s, sep string) string {
	attrs := strings.Split(s, sep)
	for i, a := range attrs {
		name, _, _ := strings.Cut(a, "=")
		if n, err := url.PathUnescape(name); err == nil {
			name = n
		}
		if strings.EqualFold(strings.TrimPrefix(strings.ToLower(name), "pkcs11:"), "pin-value") {
			attrs[i] = name[:len(name)-len("pin-value")] + "pin-value=REDACTED"
		}
	}
	return strings.Join(attrs, sep)
}

func (t *tokenKeys) Location(name Name) string {
	return strings.TrimSuffix(strings.SplitN(t.uri, "?", 2)[0], ";") + ";" + strings.TrimPrefix(TokenKeyURI(name), "pkcs11:")
}

func (t *tokenKeys) Key(name Name) (crypto.Signer, error) {
	s, err := t.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: TokenKeyURI(name)})
	if err != nil {
		if errors.Is(err, apiv1.NotFoundError{}) || strings.Contains(err.Error(), "not found") {
			return nil, fmt.Errorf("ca: %s: %w", t.Location(name), fs.ErrNotExist)
		}
		return nil, fmt.Errorf("ca: key %s: %w", t.Location(name), err)
	}
	return s, nil
}

func (t *tokenKeys) Create(name Name, spec Spec) (crypto.Signer, error) {
	if _, err := t.Key(name); err == nil {
		return nil, existsError(t.Location(name))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	req := &apiv1.CreateKeyRequest{Name: TokenKeyURI(name), Bits: spec.Bits}
	switch {
	case spec.Type == TypeEC && spec.Bits == 384:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA384
	case spec.Type == TypeEC:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA256
	default:
		req.SignatureAlgorithm = apiv1.SHA256WithRSA
	}
	if _, err := t.kms.CreateKey(req); err != nil {
		return nil, fmt.Errorf("ca: create key %s in the token: %w", t.Location(name), err)
	}
	return t.Key(name)
}

func (t *tokenKeys) Delete(name Name) error {
	if err := t.kms.DeleteKey(TokenKeyURI(name)); err != nil {
		return fmt.Errorf("ca: delete key %s: %w", t.Location(name), err)
	}
	return nil
}

func (t *tokenKeys) Close() error { return t.kms.Close() }

// LoadPair reads the certificate at certPath and its key from keys. The
// error wraps fs.ErrNotExist when the certificate is missing, and, for a
// renewable certificate (one the CA reissues at will), when its key is.
// A certificate whose key does not match is refused.
func LoadPair(keys Store, certPath string, name Name, renewable bool) (*x509.Certificate, crypto.Signer, error) {
	crt, err := pemutil.ReadCertificate(certPath)
	if err != nil {
		if _, statErr := os.Stat(certPath); errors.Is(statErr, fs.ErrNotExist) {
			return nil, nil, statErr
		}
		return nil, nil, fmt.Errorf("keystore: read %s: %w", certPath, err)
	}
	key, err := keys.Key(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !renewable {
			return nil, nil, fmt.Errorf("keystore: %s exists but its key %s does not: restore the key, or point --kms at the store that holds it", certPath, keys.Location(name))
		}
		return nil, nil, err
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(crt.PublicKey) {
		if renewable {
			return nil, nil, fmt.Errorf("keystore: key %s does not belong to %s: %w", keys.Location(name), certPath, fs.ErrNotExist)
		}
		return nil, nil, fmt.Errorf("keystore: key %s does not belong to %s: point --kms at the store that holds its key", keys.Location(name), certPath)
	}
	return crt, key, nil
}
