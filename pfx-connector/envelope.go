package pfxconnector

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
)

// KeyTransport is how an envelope's content key is encrypted to the
// recipient's RSA key.
type KeyTransport int

// Key transports.
const (
	// PKCS1v15 is rsaEncryption (RFC 5652 §4.2 of RFC 3370): what iOS
	// profile decryption and every openssl accept. The default.
	PKCS1v15 KeyTransport = iota
	// OAEPSHA256 is RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017,
	// RFC 4055 parameters), for recipients that ask for it.
	OAEPSHA256
)

var (
	oidData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidEnvelopedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidRSAESOAEP     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidMGF1          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	oidSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	// OIDAES256CBC is the content encryption of every envelope.
	OIDAES256CBC = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

// RFC 5652 structures, as far as a single KeyTransRecipientInfo needs.
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue // [0] EXPLICIT, built by hand
}

type envelopedData struct {
	Version              int
	RecipientInfos       []keyTransRecipientInfo `asn1:"set"`
	EncryptedContentInfo encryptedContentInfo
}

type keyTransRecipientInfo struct {
	Version                int
	RID                    issuerAndSerial
	KeyEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedKey           []byte
}

type issuerAndSerial struct {
	Issuer asn1.RawValue
	Serial *big.Int
}

type encryptedContentInfo struct {
	ContentType                asn1.ObjectIdentifier
	ContentEncryptionAlgorithm pkix.AlgorithmIdentifier
	EncryptedContent           []byte `asn1:"tag:0,optional"`
}

type oaepParams struct {
	Hash pkix.AlgorithmIdentifier `asn1:"explicit,tag:0"`
	MGF  pkix.AlgorithmIdentifier `asn1:"explicit,tag:1"`
}

// Envelope encrypts data as CMS EnvelopedData (DER) to the recipient
// certificate's RSA key, as Intune's connector does with PFX passwords:
// only the recipient's private key opens it. The content is encrypted with
// AES-256-CBC under a fresh key and IV; the key travels by kt.
//
// The parameters are explicit: smallstep/pkcs7 takes its content cipher and
// key transport from package variables that the SCEP endpoint owns, so an
// envelope built there would silently follow SCEP's settings.
func Envelope(data []byte, recipient *x509.Certificate, kt KeyTransport) ([]byte, error) {
	pub, ok := recipient.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: its key is %s, RSA is needed", ErrBadRecipient, recipient.PublicKeyAlgorithm)
	}
	key := make([]byte, 32)
	iv := make([]byte, aes.BlockSize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("pfx: envelope key: %w", err)
	}
	defer clear(key)
	if _, err := rand.Read(iv); err != nil {
		return nil, fmt.Errorf("pfx: envelope IV: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	// PKCS#7 padding (RFC 5652 §6.3).
	n := aes.BlockSize - len(data)%aes.BlockSize
	padded := make([]byte, len(data)+n)
	copy(padded, data)
	for i := len(data); i < len(padded); i++ {
		padded[i] = byte(n)
	}
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(padded, padded)

	var kea pkix.AlgorithmIdentifier
	var encKey []byte
	switch kt {
	case PKCS1v15:
		kea = pkix.AlgorithmIdentifier{Algorithm: oidRSAEncryption, Parameters: asn1.NullRawValue}
		// PKCS#1 v1.5 is what iOS profile decryption accepts; the
		// padding-oracle risk is the decrypting device's, and an envelope
		// is decrypted once, by the device, never by smimeca.
		//lint:ignore SA1019 iOS needs rsaEncryption key transport (OAEP is offered beside it)
		encKey, err = rsa.EncryptPKCS1v15(rand.Reader, pub, key)
	case OAEPSHA256:
		sha := pkix.AlgorithmIdentifier{Algorithm: oidSHA256, Parameters: asn1.NullRawValue}
		shaDER, _ := asn1.Marshal(sha)
		params, perr := asn1.Marshal(oaepParams{Hash: sha, MGF: pkix.AlgorithmIdentifier{Algorithm: oidMGF1, Parameters: asn1.RawValue{FullBytes: shaDER}}})
		if perr != nil {
			return nil, perr
		}
		kea = pkix.AlgorithmIdentifier{Algorithm: oidRSAESOAEP, Parameters: asn1.RawValue{FullBytes: params}}
		encKey, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, key, nil)
	default:
		return nil, fmt.Errorf("pfx: unknown key transport %d", kt)
	}
	if err != nil {
		return nil, fmt.Errorf("pfx: envelope key transport: %w", err)
	}
	ivDER, err := asn1.Marshal(iv)
	if err != nil {
		return nil, err
	}
	env, err := asn1.Marshal(envelopedData{
		Version: 0,
		RecipientInfos: []keyTransRecipientInfo{{
			Version: 0, RID: issuerAndSerial{Issuer: asn1.RawValue{FullBytes: recipient.RawIssuer}, Serial: recipient.SerialNumber},
			KeyEncryptionAlgorithm: kea, EncryptedKey: encKey,
		}},
		EncryptedContentInfo: encryptedContentInfo{
			ContentType:                oidData,
			ContentEncryptionAlgorithm: pkix.AlgorithmIdentifier{Algorithm: OIDAES256CBC, Parameters: asn1.RawValue{FullBytes: ivDER}},
			EncryptedContent:           padded,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("pfx: envelope: %w", err)
	}
	return asn1.Marshal(contentInfo{ContentType: oidEnvelopedData, Content: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: env}})
}
