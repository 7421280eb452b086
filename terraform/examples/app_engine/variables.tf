variable "project_id" {
  description = "Project of the App Engine app."
  type        = string
}

variable "location" {
  description = "Cloud Tasks location: the App Engine app's region, with the digit App Engine omits (app region \"us-central\" is location \"us-central1\", \"europe-west\" is \"europe-west1\")."
  type        = string
  default     = "us-central1"
}

variable "runtime_service_account_email" {
  description = "Service account the app runs as; null means App Engine's default, PROJECT_ID@appspot.gserviceaccount.com."
  type        = string
  default     = null
}

# `cloudtasks-deferred queue-yaml queue.yaml --output queues.auto.tfvars.json` writes
# this variable from the app's queue.yaml; the module checks every attribute.
variable "queues" {
  description = "Queues by queue ID, as the module's queues variable takes them."
  type        = any
  default = {
    default = {
      max_dispatches_per_second = 5
      max_attempts              = -1
    }
    mail = {
      max_dispatches_per_second   = 1
      max_attempts                = 6
      min_backoff                 = "10s"
      app_engine_routing_override = { service = "worker" }
    }
  }
}
