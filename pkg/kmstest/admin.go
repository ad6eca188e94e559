package kmstest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"

	"github.com/kms-key-sync/kms-key-sync/pkg/kmstest/internal/wire"
)

// adminPrefix is where the admin API lives, beside the KMS API (see Handler).
const adminPrefix = "/admin/"

// AdminHandler serves the admin API. It is unauthenticated and meant for local use only.
// Bodies and answers are JSON; errors are {"error": "..."}.
//
//	GET    /admin/keys          all keys, a seed file (JSON array of KeyRecord)
//	POST   /admin/keys          add or replace keys: a KeyRecord or an array (defaults filled)
//	PUT    /admin/keys          replace the whole store with an array of KeyRecords
//	DELETE /admin/keys          delete every key
//	GET    /admin/keys/{id}     one key
//	PATCH  /admin/keys/{id}     change a key: {"state": "Disabled"|3, "tags": {...} (replaces),
//	                            "alias": "...", "description": "..."}; answers the key
//	DELETE /admin/keys/{id}     delete a key (204, or 404)
//	GET    /admin/faults        pending faults
//	POST   /admin/faults        queue a Fault or an array of Faults
//	DELETE /admin/faults        clear the faults
//	GET    /admin/stats         the Stats
//	POST   /admin/reset-stats   zero the Stats and forget recorded requests
//	GET    /admin/requests      the recorded requests (RequestRecord array)
//	GET    /admin/shape         {"shape": "schema"|"example"}
//	PUT    /admin/shape         switch the shape: {"shape": "example"}
//	POST   /admin/tokens        accept a token: {"token": "...", "expired": false}
func (e *Emulator) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/keys", e.adminListKeys)
	mux.HandleFunc("POST /admin/keys", e.adminPutKeys)
	mux.HandleFunc("PUT /admin/keys", e.adminReplaceKeys)
	mux.HandleFunc("DELETE /admin/keys", e.adminDeleteAllKeys)
	mux.HandleFunc("GET /admin/keys/{id}", e.adminGetKey)
	mux.HandleFunc("PATCH /admin/keys/{id}", e.adminPatchKey)
	mux.HandleFunc("DELETE /admin/keys/{id}", e.adminDeleteKey)
	mux.HandleFunc("GET /admin/faults", e.adminListFaults)
	mux.HandleFunc("POST /admin/faults", e.adminInjectFaults)
	mux.HandleFunc("DELETE /admin/faults", e.adminClearFaults)
	mux.HandleFunc("GET /admin/stats", e.adminStats)
	mux.HandleFunc("POST /admin/reset-stats", e.adminResetStats)
	mux.HandleFunc("GET /admin/requests", e.adminRequests)
	mux.HandleFunc("GET /admin/shape", e.adminGetShape)
	mux.HandleFunc("PUT /admin/shape", e.adminSetShape)
	mux.HandleFunc("POST /admin/tokens", e.adminAddToken)
	mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {
		wire.AdminError(w, http.StatusNotFound, fmt.Errorf("no admin route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (e *Emulator) adminListKeys(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = WriteKeys(w, e.Keys())
}

// readKeysBody reads one KeyRecord or an array of them as keys with defaults filled.
func readKeysBody(r *http.Request, arrayOnly bool) ([]Key, error) {
	b, isArray, err := wire.ReadAdminBody(r)
	if err != nil {
		return nil, err
	}
	if !isArray {
		if arrayOnly {
			return nil, errors.New("want a JSON array of keys")
		}
		b = append(append([]byte{'['}, b...), ']')
	}
	return ReadKeys(bytes.NewReader(b))
}

func (e *Emulator) adminPutKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := readKeysBody(r, false)
	if err == nil {
		err = e.PutKeys(keys...)
	}
	if err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	wire.AdminJSON(w, http.StatusOK, map[string]int{"stored": len(keys), "total": e.KeyCount()})
}

func (e *Emulator) adminReplaceKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := readKeysBody(r, true)
	if err == nil {
		err = e.ReplaceKeys(keys...)
	}
	if err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	wire.AdminJSON(w, http.StatusOK, map[string]int{"stored": len(keys), "total": e.KeyCount()})
}

func (e *Emulator) adminDeleteAllKeys(w http.ResponseWriter, _ *http.Request) {
	e.DeleteAllKeys()
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) adminGetKey(w http.ResponseWriter, r *http.Request) {
	k, ok := e.Key(r.PathValue("id"))
	if !ok {
		wire.AdminError(w, http.StatusNotFound, fmt.Errorf("key %q: %w", r.PathValue("id"), ErrKeyNotFound))
		return
	}
	wire.AdminJSON(w, http.StatusOK, RecordOf(k))
}

// keyPatch is the body of PATCH /admin/keys/{id}; absent fields stay unchanged.
type keyPatch struct {
	State       *KeyState          `json:"state"`
	Tags        *map[string]string `json:"tags"`
	Alias       *string            `json:"alias"`
	Description *string            `json:"description"`
}

func (p *keyPatch) apply(k *Key) {
	if p.State != nil {
		k.State = State(*p.State)
	}
	if p.Tags != nil {
		k.Tags = maps.Clone(*p.Tags)
	}
	if p.Alias != nil {
		k.Alias = *p.Alias
	}
	if p.Description != nil {
		k.Description = *p.Description
	}
}

func (e *Emulator) adminPatchKey(w http.ResponseWriter, r *http.Request) {
	var p keyPatch
	if err := wire.DecodeAdminBody(r, &p); err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	k, err := e.UpdateKey(r.PathValue("id"), p.apply)
	if errors.Is(err, ErrKeyNotFound) {
		wire.AdminError(w, http.StatusNotFound, err)
		return
	}
	if err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	wire.AdminJSON(w, http.StatusOK, RecordOf(k))
}

func (e *Emulator) adminDeleteKey(w http.ResponseWriter, r *http.Request) {
	if !e.DeleteKey(r.PathValue("id")) {
		wire.AdminError(w, http.StatusNotFound, fmt.Errorf("key %q: %w", r.PathValue("id"), ErrKeyNotFound))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) adminListFaults(w http.ResponseWriter, _ *http.Request) {
	wire.AdminJSON(w, http.StatusOK, e.Faults())
}

func (e *Emulator) adminInjectFaults(w http.ResponseWriter, r *http.Request) {
	faults, err := readFaults(r)
	if err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	normalized := make([]Fault, len(faults))
	for i, f := range faults {
		if normalized[i], err = f.normalize(); err != nil {
			wire.AdminError(w, http.StatusBadRequest, err)
			return
		}
	}
	for _, f := range normalized {
		e.faults.push(f)
	}
	wire.AdminJSON(w, http.StatusOK, e.Faults())
}

func readFaults(r *http.Request) ([]Fault, error) {
	b, isArray, err := wire.ReadAdminBody(r)
	if err != nil {
		return nil, err
	}
	if !isArray {
		b = append(append([]byte{'['}, b...), ']')
	}
	var faults []Fault
	if err := json.Unmarshal(b, &faults); err != nil {
		return nil, fmt.Errorf("decode faults: %w", err)
	}
	return faults, nil
}

func (e *Emulator) adminClearFaults(w http.ResponseWriter, _ *http.Request) {
	e.ClearFaults()
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) adminStats(w http.ResponseWriter, _ *http.Request) {
	wire.AdminJSON(w, http.StatusOK, e.Stats())
}

func (e *Emulator) adminResetStats(w http.ResponseWriter, _ *http.Request) {
	e.ResetStats()
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) adminRequests(w http.ResponseWriter, _ *http.Request) {
	wire.AdminJSON(w, http.StatusOK, e.Requests())
}

type shapeBody struct {
	Shape string `json:"shape"`
}

func (e *Emulator) adminGetShape(w http.ResponseWriter, _ *http.Request) {
	wire.AdminJSON(w, http.StatusOK, shapeBody{Shape: e.Shape().String()})
}

func (e *Emulator) adminSetShape(w http.ResponseWriter, r *http.Request) {
	var body shapeBody
	err := wire.DecodeAdminBody(r, &body)
	var s Shape
	if err == nil {
		s, err = ParseShape(body.Shape)
	}
	if err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	e.SetShape(s)
	wire.AdminJSON(w, http.StatusOK, shapeBody{Shape: e.Shape().String()})
}

type tokenBody struct {
	Token   string `json:"token"`
	Expired bool   `json:"expired"`
}

func (e *Emulator) adminAddToken(w http.ResponseWriter, r *http.Request) {
	var body tokenBody
	if err := wire.DecodeAdminBody(r, &body); err != nil {
		wire.AdminError(w, http.StatusBadRequest, err)
		return
	}
	if body.Token == "" {
		wire.AdminError(w, http.StatusBadRequest, errors.New("token must not be empty"))
		return
	}
	if body.Expired {
		e.ExpireToken(body.Token)
	} else {
		e.AddToken(body.Token)
	}
	w.WriteHeader(http.StatusNoContent)
}
