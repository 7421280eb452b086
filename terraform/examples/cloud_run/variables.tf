variable "project_id" {
  description = "Project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run service and of the queues."
  type        = string
  default     = "us-central1"
}

variable "service_name" {
  description = "Name of the Cloud Run service; also the prefix of its runtime service account."
  type        = string
  default     = "deferred-app"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}[a-z0-9]$", var.service_name))
    error_message = "service_name must be 2 to 22 lowercase letters, digits and hyphens (its runtime account ID is SERVICE_NAME-runtime, at most 30 characters)."
  }
}

variable "image" {
  description = "Container image of the app, e.g. \"us-docker.pkg.dev/my-project/app/web:1.2.3\"."
  type        = string
}
