package policy

import (
	"errors"
	"fmt"
)

// Reason says which rule refused a request.
type Reason int

// Kind is what sort of refusal a Reason is, independent of any transport:
// each edge (gRPC status, SCEP failInfo, CLI exit code) maps kinds once.
type Kind int

// Kinds of refusal.
const (
	// KindInvalid: the request itself is wrong; fix it and send it again.
	KindInvalid Kind = iota + 1
	// KindNotFound: what the request names does not exist.
	KindNotFound
	// KindFailedPrecondition: the request is well-formed but the state it
	// needs does not hold (already revoked, retired device, no identity).
	KindFailedPrecondition
	// KindExhausted: a size limit was reached.
	KindExhausted
	// KindDenied: the caller may not do this.
	KindDenied
)

// Reasons a request is refused. Their String form is stable and appears in
// API error messages; reasons lists each one's name and kind.
const (
	ReasonBadUser Reason = iota + 1
	ReasonBadDevice
	ReasonDomainNotAllowed
	ReasonBadTTL
	ReasonChallengeMissing
	ReasonChallengeUnknown
	ReasonChallengeExpired
	ReasonChallengeUsed
	ReasonBadCSR
	ReasonWeakKey
	ReasonNameNotBound
	ReasonRenewalNotAuthorized
	ReasonUnknownCertificate
	ReasonAlreadyRevoked
	ReasonBadSerial
	ReasonBadReasonCode
	ReasonUnknownDevice
	ReasonDeviceRetired
	ReasonBadIdentity
	ReasonNoIdentity
	ReasonBadFormat
	ReasonBadDeviceCert
	ReasonBreakGlass
	ReasonBadPFX
	ReasonWrongPassword
	ReasonNoKey
	ReasonKeyMismatch
	ReasonCACertificate
	ReasonCannotEncrypt
	ReasonUserMismatch
	ReasonBadPurpose
	ReasonBadThumbprint
	ReasonNotEscrowed
	ReasonEntryFull
	ReasonBadCredential
	ReasonCredentialExists
	ReasonUnknownCredential
	ReasonBadIntuneRecord
	ReasonBadText
	ReasonIdentityInUse
	ReasonIdentityChange
	ReasonIdentityOnHold
	// ReasonChallengeRefused: an external challenge authority (Intune)
	// refused the request; its code is in the detail.
	ReasonChallengeRefused
	// ReasonChallengeUnverified: the external authority could not be asked,
	// or did not take the notice of the certificate.
	ReasonChallengeUnverified
	// ReasonIssueFailed: smimeca could not issue a certificate the external
	// authority had validated (signing or storage failed); it was told.
	ReasonIssueFailed
	// ReasonBreakGlassOff: a plain (break-glass) key release was asked
	// for where the operator has not allowed it (AllowBreakGlass).
	ReasonBreakGlassOff
	// Recovery requests (Recoveries).
	ReasonBadRecipient
	ReasonUnknownRecovery
	ReasonRecoveryClosed
	ReasonSelfApproval
	ReasonDoubleVote
	ReasonNotRequester
	// ReasonNotDeviceIdentity: a device asset was asked for with a client
	// certificate that is not the device's registered identity.
	ReasonNotDeviceIdentity
	// ReasonBadAsset: an asset reference that names nothing smimeca serves.
	ReasonBadAsset
	reasonEnd
)

var reasons = [reasonEnd]struct {
	name string
	kind Kind
}{
	ReasonBadUser:              {"bad-user", KindInvalid},
	ReasonBadDevice:            {"bad-device", KindInvalid},
	ReasonDomainNotAllowed:     {"domain-not-allowed", KindInvalid},
	ReasonBadTTL:               {"bad-ttl", KindInvalid},
	ReasonChallengeMissing:     {"challenge-missing", KindInvalid},
	ReasonChallengeUnknown:     {"challenge-unknown", KindInvalid},
	ReasonChallengeExpired:     {"challenge-expired", KindInvalid},
	ReasonChallengeUsed:        {"challenge-used", KindInvalid},
	ReasonBadCSR:               {"bad-csr", KindInvalid},
	ReasonWeakKey:              {"weak-key", KindInvalid},
	ReasonNameNotBound:         {"name-not-bound", KindInvalid},
	ReasonRenewalNotAuthorized: {"renewal-not-authorized", KindInvalid},
	ReasonUnknownCertificate:   {"unknown-certificate", KindNotFound},
	ReasonAlreadyRevoked:       {"already-revoked", KindFailedPrecondition},
	ReasonBadSerial:            {"bad-serial", KindInvalid},
	ReasonBadReasonCode:        {"bad-reason-code", KindInvalid},
	ReasonUnknownDevice:        {"unknown-device", KindNotFound},
	ReasonDeviceRetired:        {"device-retired", KindFailedPrecondition},
	ReasonBadIdentity:          {"bad-identity-certificate", KindInvalid},
	ReasonNoIdentity:           {"no-identity-certificate", KindFailedPrecondition},
	ReasonBadFormat:            {"bad-format", KindInvalid},
	ReasonBadDeviceCert:        {"bad-device-certificate", KindInvalid},
	ReasonBreakGlass:           {"break-glass-required", KindDenied},
	ReasonBreakGlassOff:        {"break-glass-off", KindFailedPrecondition},
	ReasonBadRecipient:         {"bad-recipient-certificate", KindInvalid},
	ReasonUnknownRecovery:      {"unknown-recovery", KindNotFound},
	ReasonRecoveryClosed:       {"recovery-closed", KindFailedPrecondition},
	ReasonSelfApproval:         {"self-approval", KindDenied},
	ReasonDoubleVote:           {"double-vote", KindFailedPrecondition},
	ReasonNotRequester:         {"not-requester", KindDenied},
	ReasonBadPFX:               {"bad-pfx", KindInvalid},
	ReasonWrongPassword:        {"wrong-password", KindInvalid},
	ReasonNoKey:                {"no-private-key", KindInvalid},
	ReasonKeyMismatch:          {"key-mismatch", KindInvalid},
	ReasonCACertificate:        {"ca-certificate", KindInvalid},
	ReasonCannotEncrypt:        {"cannot-encrypt", KindInvalid},
	ReasonUserMismatch:         {"user-mismatch", KindInvalid},
	ReasonBadPurpose:           {"bad-purpose", KindInvalid},
	ReasonBadThumbprint:        {"bad-thumbprint", KindInvalid},
	ReasonNotEscrowed:          {"not-escrowed", KindNotFound},
	ReasonEntryFull:            {"entry-full", KindExhausted},
	ReasonBadCredential:        {"bad-credential-request", KindInvalid},
	ReasonCredentialExists:     {"credential-exists", KindFailedPrecondition},
	ReasonUnknownCredential:    {"unknown-credential", KindNotFound},
	ReasonBadIntuneRecord:      {"bad-intune-record", KindInvalid},
	ReasonBadText:              {"bad-text", KindInvalid},
	ReasonIdentityInUse:        {"identity-in-use", KindFailedPrecondition},
	ReasonIdentityChange:       {"identity-change-needs-rekey", KindFailedPrecondition},
	ReasonIdentityOnHold:       {"identity-on-hold", KindFailedPrecondition},
	ReasonChallengeRefused:     {"challenge-refused", KindDenied},
	ReasonChallengeUnverified:  {"challenge-unverified", KindFailedPrecondition},
	ReasonIssueFailed:          {"issue-failed", KindFailedPrecondition},
	ReasonNotDeviceIdentity:    {"not-the-device-identity", KindDenied},
	ReasonBadAsset:             {"bad-asset", KindInvalid},
}

// Reasons returns every reason, in order: for tables at the edges that
// must cover them all.
func Reasons() []Reason {
	out := make([]Reason, 0, reasonEnd-1)
	for r := Reason(1); r < reasonEnd; r++ {
		out = append(out, r)
	}
	return out
}

// String returns the stable short name of the reason.
func (r Reason) String() string {
	if r > 0 && r < reasonEnd {
		return reasons[r].name
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Kind returns what sort of refusal r is (KindInvalid for an unknown r).
func (r Reason) Kind() Kind {
	if r > 0 && r < reasonEnd {
		return reasons[r].kind
	}
	return KindInvalid
}

// RejectError is returned when a request breaks a rule. Detail says what to
// fix and never holds a secret (no challenge, key or password).
type RejectError struct {
	Reason Reason
	Detail string
}

// Error implements error.
func (e *RejectError) Error() string {
	return "policy: " + e.Reason.String() + ": " + e.Detail
}

func reject(r Reason, detail string) error {
	return &RejectError{Reason: r, Detail: detail}
}

// IsReject reports whether err is a *RejectError and returns it.
func IsReject(err error) (*RejectError, bool) {
	var re *RejectError
	ok := errors.As(err, &re)
	return re, ok
}

// ErrNotFound is returned by stores for a missing record.
var ErrNotFound = errors.New("policy: not found")
