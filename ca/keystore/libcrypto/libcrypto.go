//go:build libcrypto && cgo

package libcrypto

/*
#cgo pkg-config: libcrypto
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/crypto.h>
#include <stdlib.h>

static EVP_PKEY *smimeca_load(const unsigned char *der, long len) {
	const unsigned char *p = der;
	return d2i_PrivateKey(EVP_PKEY_RSA, NULL, &p, len);
}

// smimeca_sign signs digest (PKCS#1 v1.5, the digest named by md_nid);
// it returns the signature's length, or 0.
static size_t smimeca_sign(EVP_PKEY *pkey, int md_nid, const unsigned char *digest, size_t dlen, unsigned char *sig, size_t siglen) {
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
	size_t out = siglen;
	if (ctx == NULL) return 0;
	if (EVP_PKEY_sign_init(ctx) <= 0 ||
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
	    EVP_PKEY_CTX_set_signature_md(ctx, EVP_get_digestbynid(md_nid)) <= 0 ||
	    EVP_PKEY_sign(ctx, sig, &out, digest, dlen) <= 0) {
		out = 0;
	}
	EVP_PKEY_CTX_free(ctx);
	return out;
}

// smimeca_decrypt removes PKCS#1 v1.5 encryption; it returns the
// plaintext's length, or -1.
static long smimeca_decrypt(EVP_PKEY *pkey, const unsigned char *in, size_t inlen, unsigned char *out, size_t outlen) {
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
	size_t n = outlen;
	long ret = -1;
	if (ctx == NULL) return -1;
	if (EVP_PKEY_decrypt_init(ctx) > 0 &&
	    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0 &&
	    EVP_PKEY_decrypt(ctx, out, &n, in, inlen) > 0) {
		ret = (long)n;
	}
	EVP_PKEY_CTX_free(ctx);
	return ret;
}
*/
import "C"

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"runtime"
	"unsafe"
)

// Enabled reports whether this build uses OpenSSL for RSA keys.
const Enabled = true

// Key is an RSA private key held by OpenSSL, with Go's key beside it for
// the public half and the operations OpenSSL does not take over.
type Key struct {
	goKey *rsa.PrivateKey
	pkey  *C.EVP_PKEY
}

// Wrap returns key as a Key when it is an RSA key, and any other key
// unchanged.
func Wrap(key crypto.Signer) (crypto.Signer, error) {
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return key, nil
	}
	der := x509.MarshalPKCS1PrivateKey(rk)
	cder := C.CBytes(der)
	clear(der)
	pkey := C.smimeca_load((*C.uchar)(cder), C.long(len(der)))
	C.OPENSSL_cleanse(cder, C.size_t(len(der)))
	C.free(cder)
	if pkey == nil {
		return nil, errors.New("libcrypto: OpenSSL did not load the RSA key")
	}
	k := &Key{goKey: rk, pkey: pkey}
	runtime.AddCleanup(k, func(p *C.EVP_PKEY) { C.EVP_PKEY_free(p) }, pkey)
	return k, nil
}

// Public implements crypto.Signer.
func (k *Key) Public() crypto.PublicKey { return k.goKey.Public() }

// nids are OpenSSL's names of the hashes a signature may name.
var nids = map[crypto.Hash]C.int{
	crypto.SHA1: C.NID_sha1, crypto.SHA224: C.NID_sha224, crypto.SHA256: C.NID_sha256,
	crypto.SHA384: C.NID_sha384, crypto.SHA512: C.NID_sha512,
}

// Sign implements crypto.Signer: PKCS#1 v1.5 of a named hash in OpenSSL,
// anything else (PSS, a raw digest) with Go's key.
func (k *Key) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	nid, ok := nids[opts.HashFunc()]
	if _, pss := opts.(*rsa.PSSOptions); pss || !ok {
		return k.goKey.Sign(rand, digest, opts)
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("libcrypto: a %s digest is %d bytes, not %d", opts.HashFunc(), opts.HashFunc().Size(), len(digest))
	}
	sig := make([]byte, k.goKey.Size())
	n := C.smimeca_sign(k.pkey, nid, (*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), C.size_t(len(sig)))
	runtime.KeepAlive(k)
	if n == 0 {
		return nil, errors.New("libcrypto: OpenSSL could not sign")
	}
	return sig[:n], nil
}

// Decrypt implements crypto.Decrypter: PKCS#1 v1.5 in OpenSSL; OAEP and
// the session-key form (constant time on bad padding) with Go's key.
func (k *Key) Decrypt(rand io.Reader, ciphertext []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	//lint:ignore SA1019 SCEP's pkcsPKIEnvelope uses rsaEncryption: what an RA key decrypts
	if o, ok := opts.(*rsa.PKCS1v15DecryptOptions); (opts != nil && !ok) || (ok && o.SessionKeyLen > 0) {
		return k.goKey.Decrypt(rand, ciphertext, opts)
	}
	if len(ciphertext) != k.goKey.Size() {
		return nil, rsa.ErrDecryption
	}
	out := make([]byte, k.goKey.Size())
	n := C.smimeca_decrypt(k.pkey, (*C.uchar)(unsafe.Pointer(&ciphertext[0])), C.size_t(len(ciphertext)),
		(*C.uchar)(unsafe.Pointer(&out[0])), C.size_t(len(out)))
	runtime.KeepAlive(k)
	if n < 0 {
		clear(out)
		return nil, rsa.ErrDecryption
	}
	return out[:n], nil
}
