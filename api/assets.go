package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/smimeca/smimeca/policy"
)

// AssetHandler serves DDM device assets at AssetPath
// {user}/{device}/{scep|identity}/{ref} to the device itself: the TLS
// client certificate must be the device's registered identity (the
// listener asks for one; a request without it never reaches here).
// Anything else is 403, audited. Every answer is application/json and
// never cached.
func AssetHandler(p AssetPolicy, enc policy.PKCS12Encoding, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+AssetPath+"{user}/{device}/{kind}/{ref}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "a client certificate (the device's identity) is required", http.StatusForbidden)
			return
		}
		client := r.TLS.PeerCertificates[0]
		user, device := r.PathValue("user"), r.PathValue("device")
		ctx, cancel := context.WithTimeout(r.Context(), assetTimeout)
		defer cancel()
		ctx = policy.WithActor(ctx, policy.Actor{Role: "device", Name: "TLS client " + sha256Hex(client.Raw)})
		doc, err := p.ReleaseAsset(ctx, policy.AssetFetch{User: user, Device: device, Kind: policy.AssetKind(r.PathValue("kind")),
			Ref: r.PathValue("ref"), Client: client, Encoding: enc}, AssetDocument)
		if err != nil {
			code, msg := assetStatus(err)
			if code == http.StatusInternalServerError {
				log.ErrorContext(ctx, "asset: internal error", "user", user, "device", device, "err", err)
			}
			http.Error(w, msg, code)
			return
		}
		defer clear(doc)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(doc)))
		_, _ = w.Write(doc)
	})
	return mux
}

// assetStatus maps a refusal to its HTTP status and message.
func assetStatus(err error) (int, string) {
	switch {
	case errors.Is(err, policy.ErrUnavailable):
		return http.StatusServiceUnavailable, "Vault is unavailable; retry later"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "timed out; retry later"
	}
	if re, ok := policy.IsReject(err); ok {
		code := map[policy.Kind]int{policy.KindDenied: http.StatusForbidden, policy.KindNotFound: http.StatusNotFound,
			policy.KindInvalid: http.StatusBadRequest, policy.KindFailedPrecondition: http.StatusConflict,
			policy.KindExhausted: http.StatusTooManyRequests}[re.Reason.Kind()]
		if code == 0 {
			code = http.StatusBadRequest
		}
		return code, re.Reason.String() + ": " + re.Detail
	}
	return http.StatusInternalServerError, "internal error; see the server log"
}
