package scep

import (
	"errors"
	"fmt"

	"github.com/smallstep/pkcs7"

	"github.com/smimeca/smimeca/policy"
)

// Bounds checked on every PKIOperation before any signature is verified or
// anything is decrypted, so that whatever an unauthenticated peer sends
// costs little: RSA verification time grows with the modulus and the
// exponent, a deep BER nesting grows the parser's stack, and the
// transactionID is copied into logs and the audit trail.
const (
	// maxBERDepth bounds the nesting of the message's BER/DER encoding; a
	// real pkiMessage nests about a dozen levels deep.
	maxBERDepth = 40
	// maxTransactionIDBytes bounds the transactionID (RFC 8894 suggests a
	// hash of the public key: 40 to 64 printable characters).
	maxTransactionIDBytes = 128
)

// errCost marks a request refused by the bounds.
var errCost = errors.New("scep: request refused before verification")

// checkCost parses the message structure only (no crypto) and refuses
// one that would be expensive or noisy to process: nesting deeper than
// maxBERDepth, a certificate with an RSA key over policy.MaxRSABits or an exponent
// other than 65537, more than one signer, a transactionID longer than
// maxTransactionIDBytes or not printable. It returns the parsed message,
// whose signer certificate the handler reads without parsing it again.
func checkCost(der []byte) (*pkcs7.PKCS7, error) {
	if err := checkDepth(der, maxBERDepth); err != nil {
		return nil, err
	}
	p7, err := parsePKCS7(der)
	if err != nil {
		return nil, fmt.Errorf("%w: not a PKCS#7 message", errCost)
	}
	for i, c := range p7.Certificates {
		if err := policy.CheckPublicKey(c.PublicKey); err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", errCost, i, err)
		}
	}
	if len(p7.Signers) != 1 {
		return nil, fmt.Errorf("%w: a pkiMessage has exactly one signer, this one %d", errCost, len(p7.Signers))
	}
	var tid string
	if err := p7.UnmarshalSignedAttribute(oidTransactionID, &tid); err == nil {
		if len(tid) > maxTransactionIDBytes {
			return nil, fmt.Errorf("%w: transactionID of %d bytes (at most %d)", errCost, len(tid), maxTransactionIDBytes)
		}
		for i := 0; i < len(tid); i++ {
			if tid[i] < 0x20 || tid[i] > 0x7e {
				return nil, fmt.Errorf("%w: transactionID is not printable ASCII", errCost)
			}
		}
	}
	return p7, nil
}

// checkDepth walks the BER encoding iteratively (constructed values only,
// with an explicit stack) and refuses nesting deeper than max. It reads
// lengths and tags only; indefinite lengths end at their end-of-contents.
func checkDepth(b []byte, max int) error {
	type frame struct{ end int } // -1: indefinite
	var stack []frame
	i := 0
	for i < len(b) {
		// Close the frames that end here.
		for len(stack) > 0 && stack[len(stack)-1].end >= 0 && i >= stack[len(stack)-1].end {
			stack = stack[:len(stack)-1]
		}
		if i+2 <= len(b) && b[i] == 0 && b[i+1] == 0 && len(stack) > 0 && stack[len(stack)-1].end < 0 {
			stack = stack[:len(stack)-1] // end-of-contents
			i += 2
			continue
		}
		tag := b[i]
		i++
		if tag&0x1f == 0x1f { // high tag number
			for i < len(b) && b[i]&0x80 != 0 {
				i++
			}
			i++
		}
		if i >= len(b) {
			return nil // truncated: the parser will say so
		}
		l := int(b[i])
		i++
		indefinite := false
		switch {
		case l == 0x80:
			indefinite = true
		case l > 0x80:
			n := l & 0x7f
			if n > 4 || i+n > len(b) {
				return nil
			}
			l = 0
			for k := 0; k < n; k++ {
				l = l<<8 | int(b[i+k])
			}
			i += n
		}
		if tag&0x20 == 0 { // primitive
			if indefinite {
				return nil
			}
			i += l
			continue
		}
		if len(stack) >= max {
			return fmt.Errorf("%w: BER nesting deeper than %d", errCost, max)
		}
		if indefinite {
			stack = append(stack, frame{end: -1})
		} else {
			stack = append(stack, frame{end: i + l})
		}
	}
	return nil
}
