package intune

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/smimeca/smimeca/policy"
)

// Revoker revokes an issued certificate by decimal serial
// (*policy.Revocations).
type Revoker interface {
	RevokeCertificate(ctx context.Context, serial string, reasonCode int, reason string) (policy.Issued, error)
}

// Feed carries out Intune's revocation requests for this CA: it downloads
// them, revokes what is ours (audited with the intune actor) and uploads a
// result for each. On several nodes a lease lets one node run it at a time.
type Feed struct {
	Client  *Client
	Revoker Revoker
	Leases  policy.Leases
	// Holder names this node for the lease.
	Holder string
	// IssuerName is the issuing CA's name (its subject, as the success
	// notifications gave it); requests for another issuer are answered as
	// not found.
	IssuerName string
	// Interval is the time between two runs (and the lease's life).
	Interval time.Duration
	Log      *slog.Logger
	now      func() time.Time
}

// LeaseName is the lease a Feed holds.
const LeaseName = "intune-revocation-feed"

// Run runs the feed now and every Interval until ctx ends.
func (f *Feed) Run(ctx context.Context) {
	t := time.NewTicker(f.Interval)
	defer t.Stop()
	for {
		if n, err := f.Once(ctx); err != nil {
			f.Log.Warn("intune: revocation feed", "err", err, "done", n)
		} else if n > 0 {
			f.Log.Info("intune: revocation feed", "requests", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once takes the lease (or returns 0 when another node holds it), then
// downloads and answers pages of requests until a page comes back short;
// it returns how many requests it answered.
func (f *Feed) Once(ctx context.Context) (int, error) {
	now := time.Now
	if f.now != nil {
		now = f.now
	}
	ok, err := f.Leases.TryLease(ctx, LeaseName, f.Holder, f.Interval, now())
	if err != nil || !ok {
		return 0, err
	}
	done := 0
	for {
		reqs, err := f.Client.DownloadRevocationRequests(ctx, MaxRevocationRequests, f.IssuerName)
		if err != nil {
			return done, err
		}
		if len(reqs) == 0 {
			return done, nil
		}
		results := make([]RevocationResult, 0, len(reqs))
		for _, r := range reqs {
			results = append(results, f.answer(ctx, r))
		}
		if err := f.Client.UploadRevocationResults(ctx, results); err != nil {
			return done, err
		}
		done += len(reqs)
		if len(reqs) < MaxRevocationRequests {
			return done, nil
		}
	}
}

// answer carries out one request.
func (f *Feed) answer(ctx context.Context, r RevocationRequest) RevocationResult {
	res := RevocationResult{RequestContext: r.RequestContext}
	if r.IssuerName != "" && f.IssuerName != "" && !strings.EqualFold(strings.TrimSpace(r.IssuerName), f.IssuerName) {
		res.ErrorCode, res.ErrorMessage = RevocationCertificateNotFound, "not issued by this CA ("+f.IssuerName+")"
		return res
	}
	serial, ok := new(big.Int).SetString(strings.NewReplacer(" ", "", ":", "").Replace(r.SerialNumber), 16)
	if !ok || serial.Sign() <= 0 {
		res.ErrorCode, res.ErrorMessage = RevocationParameterInvalid, fmt.Sprintf("%q is not a hexadecimal serial number", r.SerialNumber)
		return res
	}
	actx := policy.WithActor(ctx, policy.Actor{Role: "intune", Name: "intune revocation request " + firstLine(r.RequestContext)})
	_, err := f.Revoker.RevokeCertificate(actx, serial.String(), 0, "requested by Intune")
	if err == nil {
		res.Succeeded = true
		return res
	}
	re, isReject := policy.IsReject(err)
	switch {
	case isReject && re.Reason == policy.ReasonUnknownCertificate:
		res.ErrorCode, res.ErrorMessage = RevocationCertificateNotFound, "no certificate of this CA has that serial"
	case isReject && re.Reason == policy.ReasonAlreadyRevoked:
		res.ErrorCode, res.ErrorMessage = RevocationConflict, "already revoked"
	case isReject:
		res.ErrorCode, res.ErrorMessage = RevocationNonRetryable, re.Error()
	case errors.Is(err, policy.ErrUnavailable):
		res.ErrorCode, res.ErrorMessage = RevocationRetryable, "the CA's store is unavailable; ask again"
	default:
		f.Log.Error("intune: revocation failed", "request", r.RequestContext, "err", err)
		res.ErrorCode, res.ErrorMessage = RevocationRetryable, "the CA could not revoke it now; ask again"
	}
	return res
}
