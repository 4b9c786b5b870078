package intune

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"

	"github.com/smimeca/smimeca/policy"
)

// Authority is the Client as policy's ChallengeAuthority: Intune validates
// the challenges of its SCEP profiles and is told what became of each
// request.
type Authority struct {
	Client *Client
	Log    *slog.Logger
}

var _ policy.ChallengeAuthority = Authority{}

// Name implements policy.ChallengeAuthority.
func (Authority) Name() string { return "intune" }

// Validate implements policy.ChallengeAuthority: a code other than Success
// is a *policy.AuthorityRefusal.
func (a Authority) Validate(ctx context.Context, transactionID string, csrDER []byte) error {
	err := a.Client.ValidateRequest(ctx, transactionID, csrDER)
	var r *Refusal
	if errors.As(err, &r) {
		return &policy.AuthorityRefusal{Code: r.Code, Description: firstLine(r.Description)}
	}
	return err
}

// Issued implements policy.ChallengeAuthority with the success
// notification.
func (a Authority) Issued(ctx context.Context, transactionID string, csrDER []byte, leaf, issuer *x509.Certificate) error {
	return a.Client.SuccessNotification(ctx, Issued{TransactionID: transactionID, CSRDER: csrDER, Certificate: leaf, Issuer: issuer})
}

// Failed implements policy.ChallengeAuthority with the failure
// notification (HResultFor the kind of failure); a notification Intune
// does not take is logged, the device's answer is a failure either way.
func (a Authority) Failed(ctx context.Context, transactionID string, csrDER []byte, kind policy.Kind, detail string) {
	if err := a.Client.FailureNotification(ctx, transactionID, csrDER, HResultFor(kind), detail); err != nil && a.Log != nil {
		a.Log.Warn("intune: failure notification not taken", "transaction_id", transactionID, "err", err)
	}
}

// HRESULTs of failure notifications, by kind of failure (what the Intune
// console shows an administrator).
const (
	HResultInvalidArg   uint32 = 0x80070057 // E_INVALIDARG: the request breaks a rule (names, domain, key)
	HResultAccessDenied uint32 = 0x80070005 // E_ACCESSDENIED
	HResultInvalidState uint32 = 0x8007139F // ERROR_INVALID_STATE: Intune did not take the success notification
	HResultNotFound     uint32 = 0x80070490 // ERROR_NOT_FOUND
	HResultFail         uint32 = 0x80004005 // E_FAIL: smimeca could not issue (signing, storage)
)

// HResultFor returns the HRESULT a failure of kind is reported with.
func HResultFor(kind policy.Kind) uint32 {
	switch kind {
	case policy.KindInvalid:
		return HResultInvalidArg
	case policy.KindDenied:
		return HResultAccessDenied
	case policy.KindFailedPrecondition:
		return HResultInvalidState
	case policy.KindNotFound:
		return HResultNotFound
	}
	return HResultFail
}
