package caddymodule

import (
	"encoding/json"
	"net/http"
	"time"
)

// created is reported as every model's creation time: the gateway does not
// know when upstream models were made, and a stable value keeps caches happy.
var created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Unix()

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// serveModels answers GET /v1/models (and /v1/models/{id}) from configuration.
func (h *Handler) serveModels(w http.ResponseWriter, id string) {
	if id != "" {
		if _, ok := h.modelSet[id]; !ok {
			h.reject(w, invalidRequest(http.StatusNotFound, "model_not_found", "model", "the model does not exist or is not served by this gateway"))
			return
		}
		writeJSON(w, modelObject{ID: id, Object: "model", Created: created, OwnedBy: "model-router"})
		return
	}
	list := struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}{Object: "list", Data: make([]modelObject, 0, len(h.models)+1)}
	for _, m := range h.models {
		list.Data = append(list.Data, modelObject{ID: m, Object: "model", Created: created, OwnedBy: "model-router"})
	}
	writeJSON(w, list)
}

func writeJSON(w http.ResponseWriter, v any) {
	buf, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(buf, '\n'))
}
