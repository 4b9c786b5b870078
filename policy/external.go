package policy

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ExternalDevicePrefix prefixes the device id of a certificate whose
// challenge an external authority validated: such devices are not in the
// registry (the authority manages them), and renew like any other.
const ExternalDevicePrefix = "intune/"

// ChallengeAuthority is a service outside smimeca that hands devices their
// challenges and vouches for them — Intune, for its third-party CA
// contract — and is told what became of each request it vouched for.
type ChallengeAuthority interface {
	// Name names the authority in audit events and errors ("intune").
	Name() string
	// Validate asks whether the CSR (its DER, with the challenge in its
	// challengePassword) of the SCEP transaction may be issued: nil to go
	// on, an *AuthorityRefusal when the authority says no, any other
	// error when it could not be asked.
	Validate(ctx context.Context, transactionID string, csrDER []byte) error
	// Issued tells the authority the certificate was issued; an error
	// means the device must not get it.
	Issued(ctx context.Context, transactionID string, csrDER []byte, leaf, issuer *x509.Certificate) error
	// Failed tells the authority a request it vouched for failed, and
	// why.
	Failed(ctx context.Context, transactionID string, csrDER []byte, kind Kind, detail string)
}

// AuthorityRefusal is a challenge authority's refusal, in its own words
// (Intune: ChallengeExpired, SubjectAltNameMismatch, …).
type AuthorityRefusal struct {
	Code, Description string
}

func (r *AuthorityRefusal) Error() string { return r.Code + ": " + r.Description }

// ExternalEnrollment issues the S/MIME signing certificate to devices whose
// challenge an external authority validates instead of smimeca (Intune's
// SCEP profiles). It is safe for concurrent use.
type ExternalEnrollment struct {
	e    *Enrollment
	auth ChallengeAuthority
}

// External returns the enrolment of requests auth vouches for, under the
// same key, name and domain rules as Enroll.
func (s *Services) External(auth ChallengeAuthority) *ExternalEnrollment {
	return &ExternalEnrollment{e: s.Enrollment, auth: auth}
}

// Enroll decides a request sent to the authority's endpoint. An initial
// request is checked (key, signature) before anything leaves smimeca, then
// validated by the authority; only then are its names read (exactly one
// mailbox address, in an rfc822Name or, failing that, the CN; the
// authority's own URI names are accepted and left out), the certificate
// signed, the authority told, and — only if it took the news — the
// certificate recorded and returned. Once the authority was asked, every
// failure (its own refusal included) is reported to it. A renewal needs no authority: the
// certificate being renewed vouches for it, as on /scep.
func (x *ExternalEnrollment) Enroll(ctx context.Context, req Request) ([]*x509.Certificate, error) {
	e := x.e
	switch req.Kind {
	case Renewal:
		return e.renew(ctx, req)
	case Initial:
	default:
		return nil, reject(ReasonBadCSR, "unsupported request kind")
	}
	if err := e.checkCSR(req.CSR); err != nil {
		return nil, e.refused(ctx, ActionEnroll, "", "", err)
	}
	if req.Challenge == "" {
		return nil, e.refused(ctx, ActionEnroll, "", "", reject(ReasonChallengeMissing, "the CSR carries no challengePassword"))
	}
	name := x.auth.Name()
	// Once the authority was asked, every failure is reported to it and is a
	// refusal for the device (a resend would need a new validation).
	fail := func(user, device string, err error) ([]*x509.Certificate, error) {
		kind, detail := Kind(0), "smimeca could not issue the certificate; see its log" // smimeca's own failure
		if re, ok := IsReject(err); ok {
			kind, detail = re.Reason.Kind(), re.Error()
		} else {
			err = reject(ReasonIssueFailed, fmt.Sprintf("smimeca could not issue the certificate (%v); %s was told; enrol again", err, name))
		}
		x.auth.Failed(ctx, req.TransactionID, req.CSR.Raw, kind, detail)
		return nil, e.refused(ctx, ActionEnroll, user, device, err)
	}
	if err := x.auth.Validate(ctx, req.TransactionID, req.CSR.Raw); err != nil {
		var r *AuthorityRefusal
		if errors.As(err, &r) {
			return fail("", "", reject(ReasonChallengeRefused, fmt.Sprintf("%s refused the request: %s", name, r.Code)))
		}
		return fail("", "", reject(ReasonChallengeUnverified, fmt.Sprintf("%s could not be asked about the challenge; try again later (%v)", name, err)))
	}
	user, device, err := externalNames(req.CSR)
	if err != nil {
		return fail("", "", err)
	}
	if err := e.cfg.Domains.Check(user); err != nil {
		return fail(user, device, err)
	}
	chain, err := e.issueThen(ctx, ActionEnroll, req.CSR, user, device,
		Commit{Unregistered: true, TransactionID: req.TransactionID, KeySHA256: keyHash(req.CSR)},
		func(chain []*x509.Certificate) error {
			if err := x.auth.Issued(ctx, req.TransactionID, req.CSR.Raw, chain[0], chain[len(chain)-1]); err != nil {
				return reject(ReasonChallengeUnverified, fmt.Sprintf("%s did not take the notice of the certificate, so it is not delivered: %v", name, err))
			}
			return nil
		})
	if err != nil {
		return fail(user, device, err)
	}
	return chain, nil
}

// externalNames reads who a request vouched for by an external authority
// is for: exactly one mailbox address (the rfc822Name SANs, or the CN when
// there is none), normalised; and the device id: ExternalDevicePrefix and
// Intune's device id (a URI SAN IntuneDeviceId://<id>) or, without one,
// the SHA-256 of the key (its first 16 hex digits). DNS and IP names, and
// URIs other than Intune's (its device id, and the SID URL
// tag:microsoft.com,2022-09-14:sid:…), are refused.
func externalNames(csr *x509.CertificateRequest) (user, device string, err error) {
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 {
		return "", "", reject(ReasonNameNotBound, "the CSR requests DNS or IP names; an S/MIME certificate carries the user's address only")
	}
	deviceID := ""
	for _, u := range csr.URIs {
		switch {
		case strings.EqualFold(u.Scheme, "IntuneDeviceId"):
			deviceID = intuneDeviceID(u)
		case u.Scheme == "tag" && strings.HasPrefix(u.Opaque, "microsoft.com,2022-09-14:sid:"):
		default:
			return "", "", reject(ReasonNameNotBound, fmt.Sprintf("the CSR requests the URI %q; only Intune's device id and SID URIs are accepted (and left out)", u.String()))
		}
	}
	addrs := map[string]bool{}
	for _, a := range csr.EmailAddresses {
		n, err := NormalizeEmail(a)
		if err != nil {
			return "", "", err
		}
		addrs[n] = true
	}
	if len(addrs) == 0 && strings.Contains(csr.Subject.CommonName, "@") {
		n, err := NormalizeEmail(csr.Subject.CommonName)
		if err != nil {
			return "", "", err
		}
		addrs[n] = true
	}
	if len(addrs) != 1 {
		return "", "", reject(ReasonNameNotBound, fmt.Sprintf("the CSR names %d mailbox addresses; the SCEP profile must put exactly one in the subject alternative name (e-mail address) or the CN", len(addrs)))
	}
	for a := range addrs {
		user = a
	}
	if err := checkNamesBound(&x509.CertificateRequest{Subject: csr.Subject, EmailAddresses: csr.EmailAddresses}, user); err != nil {
		return "", "", err
	}
	if deviceID == "" {
		sum := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
		deviceID = "key-" + hex.EncodeToString(sum[:8])
	}
	return user, ExternalDevicePrefix + deviceID, nil
}

// intuneDeviceID returns the device id of an IntuneDeviceId://<id> URI,
// kept to letters, digits and '-' (at most 64).
func intuneDeviceID(u *url.URL) string {
	id := u.Host + u.Opaque
	if id == "" {
		id = strings.Trim(u.Path, "/")
	}
	var b strings.Builder
	for _, r := range strings.ToLower(id) {
		if b.Len() < 64 && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			b.WriteRune(r)
		}
	}
	return b.String()
}
