package iamtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

// AdminHandler serves IAM's admin API under AdminPrefix. Like the Emulator's, it is
// unauthenticated and meant for local use only. Bodies and answers are JSON; errors are
// {"error": "..."}; setters answer 204.
//
//	GET    /admin/iam/identity-providers       the identity providers (IdentityProvider array)
//	PUT    /admin/iam/identity-providers       add or replace one: an IdentityProvider, with
//	                                           signing_key a string holding the JWKS document
//	                                           (or a JWKS object)
//	DELETE /admin/iam/identity-providers/{id}  delete one (204, or 404)
//	GET    /admin/iam/rules                    the conversion rules (Rule array)
//	PUT    /admin/iam/rules                    Allow: {"idp": "...", "subject": "...", "projects": [...]}
//	DELETE /admin/iam/rules                    Revoke: {"idp": "...", "subject": "..."}
//	GET    /admin/iam/node-agency              {"projects": [...]}
//	PUT    /admin/iam/node-agency              SetNodeAgency: {"projects": [...]} ([] = no agency)
//	PUT    /admin/iam/pod-identity             SetPodIdentity: {"token": "...", "projects": [...]}
//	GET    /admin/iam/lifetime                 {"seconds": N}
//	PUT    /admin/iam/lifetime                 SetCredentialLifetime: {"seconds": N}, N > 0
//	GET    /admin/iam/faults                   pending faults (Fault array)
//	POST   /admin/iam/faults                   queue a Fault or an array of them; answers
//	                                           the pending faults
//	DELETE /admin/iam/faults                   ClearFaults
//	GET    /admin/iam/stats                    the Stats
//	POST   /admin/iam/reset-stats              ResetStats
func (i *IAM) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	const p = AdminPrefix
	mux.HandleFunc("GET "+p+"identity-providers", func(w http.ResponseWriter, _ *http.Request) {
		wire.AdminJSON(w, http.StatusOK, i.IdentityProviders())
	})
	mux.HandleFunc("PUT "+p+"identity-providers", i.adminPutIdP)
	mux.HandleFunc("DELETE "+p+"identity-providers/{id}", i.adminDeleteIdP)
	mux.HandleFunc("GET "+p+"rules", func(w http.ResponseWriter, _ *http.Request) {
		wire.AdminJSON(w, http.StatusOK, i.Rules())
	})
	mux.HandleFunc("PUT "+p+"rules", i.adminAllow)
	mux.HandleFunc("DELETE "+p+"rules", i.adminRevoke)
	mux.HandleFunc("GET "+p+"node-agency", func(w http.ResponseWriter, _ *http.Request) {
		wire.AdminJSON(w, http.StatusOK, projectsBody{Projects: nonNil(i.NodeAgency())})
	})
	mux.HandleFunc("PUT "+p+"node-agency", i.adminSetNodeAgency)
	mux.HandleFunc("PUT "+p+"pod-identity", i.adminSetPodIdentity)
	mux.HandleFunc("GET "+p+"lifetime", func(w http.ResponseWriter, _ *http.Request) {
		wire.AdminJSON(w, http.StatusOK, lifetimeBody{Seconds: int64(i.CredentialLifetime() / time.Second)})
	})
	mux.HandleFunc("PUT "+p+"lifetime", i.adminSetLifetime)
	mux.HandleFunc("GET "+p+"faults", func(w http.ResponseWriter, _ *http.Request) {
		wire.AdminJSON(w, http.StatusOK, nonNil(i.Faults()))
	})
	mux.HandleFunc("POST "+p+"faults", i.adminInjectFaults)
	mux.HandleFunc("DELETE "+p+"faults", func(w http.ResponseWriter, _ *http.Request) {
		i.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET "+p+"stats", func(w http.ResponseWriter, _ *http.Request) {
		wire.AdminJSON(w, http.StatusOK, i.Stats())
	})
	mux.HandleFunc("POST "+p+"reset-stats", func(w http.ResponseWriter, _ *http.Request) {
		i.ResetStats()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
		wire.AdminError(w, http.StatusNotFound, fmt.Errorf("no admin route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

type ruleBody struct {
	IdP      string   `json:"idp"`
	Subject  string   `json:"subject"`
	Projects []string `json:"projects,omitempty"`
}

type projectsBody struct {
	Projects []string `json:"projects"`
}

type podIdentityBody struct {
	Token    string   `json:"token"`
	Projects []string `json:"projects"`
}

type lifetimeBody struct {
	Seconds int64 `json:"seconds"`
}

// decodeAdmin decodes an admin body strictly, answering 400 on failure.
func decodeAdmin(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := wire.DecodeAdminBody(r, v); err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return false
	}
	return true
}

func (i *IAM) adminPutIdP(w http.ResponseWriter, r *http.Request) {
	var p IdentityProvider
	if !decodeAdmin(w, r, &p) {
		return
	}
	if err := i.PutIdentityProvider(p); err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (i *IAM) adminDeleteIdP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	i.mu.Lock()
	_, ok := i.idps[id]
	delete(i.idps, id)
	i.mu.Unlock()
	if !ok {
		wire.AdminError(w, http.StatusNotFound, fmt.Errorf("identity provider %q does not exist", id))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (b *ruleBody) check() error {
	if b.IdP == "" || b.Subject == "" {
		return errors.New("idp and subject must not be empty")
	}
	return nil
}

// decodeRule reads and checks a rule body; on false it has answered with the error.
func decodeRule(w http.ResponseWriter, r *http.Request) (ruleBody, bool) {
	var b ruleBody
	if !decodeAdmin(w, r, &b) {
		return b, false
	}
	if err := b.check(); err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return b, false
	}
	return b, true
}

func (i *IAM) adminAllow(w http.ResponseWriter, r *http.Request) {
	if b, ok := decodeRule(w, r); ok {
		i.Allow(b.IdP, b.Subject, b.Projects...)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (i *IAM) adminRevoke(w http.ResponseWriter, r *http.Request) {
	if b, ok := decodeRule(w, r); ok {
		i.Revoke(b.IdP, b.Subject)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (i *IAM) adminSetNodeAgency(w http.ResponseWriter, r *http.Request) {
	var b projectsBody
	if !decodeAdmin(w, r, &b) {
		return
	}
	i.SetNodeAgency(b.Projects...)
	w.WriteHeader(http.StatusNoContent)
}

func (i *IAM) adminSetPodIdentity(w http.ResponseWriter, r *http.Request) {
	var b podIdentityBody
	if !decodeAdmin(w, r, &b) {
		return
	}
	i.SetPodIdentity(b.Token, b.Projects...)
	w.WriteHeader(http.StatusNoContent)
}

func (i *IAM) adminSetLifetime(w http.ResponseWriter, r *http.Request) {
	var b lifetimeBody
	if !decodeAdmin(w, r, &b) {
		return
	}
	if b.Seconds <= 0 {
		wire.AdminError(w, http.StatusBadRequest, errors.New("seconds must be positive"))
		return
	}
	i.SetCredentialLifetime(time.Duration(b.Seconds) * time.Second)
	w.WriteHeader(http.StatusNoContent)
}

func (i *IAM) adminInjectFaults(w http.ResponseWriter, r *http.Request) {
	b, isArray, err := wire.ReadAdminBody(r)
	if err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	if !isArray {
		b = append(append([]byte{'['}, b...), ']')
	}
	var faults []Fault
	if err := json.Unmarshal(b, &faults); err != nil {
		wire.AdminError(w, http.StatusBadRequest, fmt.Errorf("decode faults: %w", err))
		return
	}
	for _, f := range faults {
		if err := f.check(); err != nil {
			wire.AdminError(w, http.StatusBadRequest, err)
			return
		}
	}
	for _, f := range faults {
		i.InjectFault(f)
	}
	wire.AdminJSON(w, http.StatusOK, nonNil(i.Faults()))
}

// check validates a fault from the admin API, where a status of 0 means 500.
func (f Fault) check() error {
	switch {
	case !validIAMRoute(f.Route):
		return fmt.Errorf("fault route %q is not one of %s, %s, %s, %s", f.Route,
			RouteIDToken, RouteSecurityTokens, RouteMetadata, RoutePodIdentity)
	case f.Status != 0 && (f.Status < 400 || f.Status > 599):
		return fmt.Errorf("fault status %d is not from 400 to 599", f.Status)
	case f.Count < 0:
		return fmt.Errorf("fault count %d is negative", f.Count)
	default:
		return nil
	}
}
