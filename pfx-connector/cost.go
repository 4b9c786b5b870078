package pfxconnector

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
)

// MaxIterations is the largest key-derivation iteration count accepted in
// a PFX's MAC: go-pkcs12 verifies the MAC first, with the count the file
// names, so an unbounded count is a CPU cost any file can impose, with any
// password (2 000 000 iterations: about 2 s). Real exports use 2 048 (OpenSSL,
// Windows) to 600 000 (OpenSSL 3 with -iter).
const MaxIterations = 1_000_000

// ErrTooCostly means the PFX asks for more key-derivation work than
// MaxIterations.
var ErrTooCostly = errors.New("pfx: the PFX asks for too many key-derivation iterations")

// The outer PFX structure (RFC 7292 4), as far as the MAC needs.
type pfxOuter struct {
	Version  int
	AuthSafe asn1.RawValue
	MacData  macData `asn1:"optional"`
}

type macData struct {
	Mac struct {
		Algorithm pkix.AlgorithmIdentifier
		Digest    []byte
	}
	MacSalt    []byte
	Iterations int `asn1:"optional,default:1"`
}

// PBMAC1 (RFC 9579) carries its PBKDF2 parameters in the MAC algorithm.
var oidPBMAC1 = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 14}

type pbmac1Params struct {
	KDF    pkix.AlgorithmIdentifier
	MacAlg pkix.AlgorithmIdentifier
}

type pbkdf2Params struct {
	Salt       asn1.RawValue
	Iterations int
}

// checkCost reads the PFX's MAC parameters (no cryptography) and refuses
// an iteration count over MaxIterations. A file it cannot read is left to
// the decoder, which refuses it with its own reason.
func checkCost(pfx []byte) error {
	var p pfxOuter
	if _, err := asn1.Unmarshal(pfx, &p); err != nil {
		return nil
	}
	n := p.MacData.Iterations
	if p.MacData.Mac.Algorithm.Algorithm.Equal(oidPBMAC1) {
		var pm pbmac1Params
		var kdf pbkdf2Params
		if _, err := asn1.Unmarshal(p.MacData.Mac.Algorithm.Parameters.FullBytes, &pm); err == nil {
			if _, err := asn1.Unmarshal(pm.KDF.Parameters.FullBytes, &kdf); err == nil {
				n = kdf.Iterations
			}
		}
	}
	if n > MaxIterations || n < 0 {
		return fmt.Errorf("%w: %d (at most %d); export it again with a usual count", ErrTooCostly, n, MaxIterations)
	}
	return nil
}
