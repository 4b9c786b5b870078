package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/policy"
)

// recoveryNotifier returns the hook that tells the organisation of each
// recovery step (nil without a URL): the audit event as JSON, POSTed in the
// background with a 10 s timeout; a failure is logged and changes nothing.
// The event holds no secret (policy.Event).
func recoveryNotifier(url string, log *slog.Logger) func(context.Context, policy.Event) {
	if url == "" {
		return nil
	}
	client := &http.Client{Timeout: 10 * time.Second}
	return func(_ context.Context, e policy.Event) {
		body, err := json.Marshal(e)
		if err != nil {
			return
		}
		go func() {
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				log.Warn("recovery notice not delivered", "action", e.Action, "user", e.User, "err", err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				log.Warn("recovery notice refused", "action", e.Action, "user", e.User, "status", resp.Status)
			}
		}()
	}
}

// recoveryConfigured reports whether key recovery is set up: an active
// recovery-approver credential exists. Plain break-glass is then refused.
func recoveryConfigured(creds *policy.Credentials) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		list, err := creds.List(ctx)
		if err != nil {
			return false, err
		}
		now := time.Now()
		for _, c := range list {
			if c.Role == string(api.RoleRecoveryApprover) && !c.Revoked() && now.Before(c.ExpiresAt) {
				return true, nil
			}
		}
		return false, nil
	}
}
