variable "project_id" {
  description = "ID of the project that holds the queues and the invoker service account, e.g. \"my-project\"."
  type        = string

  validation {
    condition     = can(regex("^([a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6 to 30 lowercase letters, digits and hyphens, starting with a letter), not a project number or name; got \"${var.project_id}\"."
  }
}

variable "location" {
  description = "Cloud Tasks location of the queues, e.g. \"us-central1\" (CLOUDTASKS_DEFERRED_LOCATION). Queues with App Engine targets must be in the App Engine app's region."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*[a-z0-9]$", var.location))
    error_message = "location must be a Cloud Tasks location such as \"us-central1\"; got \"${var.location}\"."
  }
}

variable "queues" {
  description = <<-EOT
    Queues to create, keyed by queue ID. Every attribute is optional; null leaves it to
    Cloud Tasks' default (500 dispatches/s, 1000 concurrent dispatches, 100 attempts,
    backoff from 0.1s to 3600s doubling 16 times, no age limit, no dispatch logs).
    Durations are seconds with up to nine decimals and an "s", e.g. "0.5s" or "600s".
    `cloudtasks-deferred queue-yaml queue.yaml` writes this map from a queue.yaml file.
  EOT
  type = map(object({
    max_dispatches_per_second = optional(number) # (0, 500]; queue.yaml `rate`
    max_concurrent_dispatches = optional(number) # 1..5000; queue.yaml `max_concurrent_requests`
    max_attempts              = optional(number) # -1 (unlimited) or more; queue.yaml `task_retry_limit` + 1
    min_backoff               = optional(string)
    max_backoff               = optional(string)
    max_doublings             = optional(number)
    max_retry_duration        = optional(string) # "0s": unlimited; queue.yaml `task_age_limit`
    app_engine_routing_override = optional(object({
      service  = optional(string)
      version  = optional(string)
      instance = optional(string)
    }))
    logging_sampling_ratio = optional(number) # 0..1 of dispatches logged to Cloud Logging
  }))
  default = { default = {} }

  validation {
    condition     = length(var.queues) > 0 && alltrue([for id in keys(var.queues) : can(regex("^[A-Za-z0-9-]{1,100}$", id))])
    error_message = "queues must hold at least one queue, keyed by queue ID (1 to 100 letters, digits or hyphens); invalid IDs: ${jsonencode([for id in keys(var.queues) : id if !can(regex("^[A-Za-z0-9-]{1,100}$", id))])}."
  }
  validation {
    condition     = alltrue([for q in values(var.queues) : q.max_dispatches_per_second == null ? true : q.max_dispatches_per_second > 0 && q.max_dispatches_per_second <= 500])
    error_message = "max_dispatches_per_second must be above 0 and at most 500; invalid in queues ${jsonencode([for id, q in var.queues : id if q.max_dispatches_per_second == null ? false : !(q.max_dispatches_per_second > 0 && q.max_dispatches_per_second <= 500)])}."
  }
  validation {
    condition     = alltrue([for q in values(var.queues) : q.max_concurrent_dispatches == null ? true : floor(q.max_concurrent_dispatches) == q.max_concurrent_dispatches && q.max_concurrent_dispatches >= 1 && q.max_concurrent_dispatches <= 5000])
    error_message = "max_concurrent_dispatches must be a whole number from 1 to 5000; invalid in queues ${jsonencode([for id, q in var.queues : id if q.max_concurrent_dispatches == null ? false : !(floor(q.max_concurrent_dispatches) == q.max_concurrent_dispatches && q.max_concurrent_dispatches >= 1 && q.max_concurrent_dispatches <= 5000)])}."
  }
  validation {
    condition     = alltrue([for q in values(var.queues) : q.max_attempts == null ? true : floor(q.max_attempts) == q.max_attempts && q.max_attempts >= -1])
    error_message = "max_attempts must be a whole number >= -1 (-1 means unlimited); invalid in queues ${jsonencode([for id, q in var.queues : id if q.max_attempts == null ? false : !(floor(q.max_attempts) == q.max_attempts && q.max_attempts >= -1)])}."
  }
  validation {
    condition     = alltrue([for q in values(var.queues) : q.max_doublings == null ? true : floor(q.max_doublings) == q.max_doublings && q.max_doublings >= 0])
    error_message = "max_doublings must be a whole number >= 0; invalid in queues ${jsonencode([for id, q in var.queues : id if q.max_doublings == null ? false : !(floor(q.max_doublings) == q.max_doublings && q.max_doublings >= 0)])}."
  }
  validation {
    condition     = alltrue(flatten([for q in values(var.queues) : [for d in [q.min_backoff, q.max_backoff, q.max_retry_duration] : d == null ? true : can(regex("^[0-9]+(\\.[0-9]{1,9})?s$", d))]]))
    error_message = "min_backoff, max_backoff and max_retry_duration must be seconds with up to nine decimals followed by \"s\", e.g. \"0.1s\", \"3600s\"; invalid in queues ${jsonencode([for id, q in var.queues : id if !alltrue([for d in [q.min_backoff, q.max_backoff, q.max_retry_duration] : d == null ? true : can(regex("^[0-9]+(\\.[0-9]{1,9})?s$", d))])])}."
  }
  validation {
    condition     = alltrue([for q in values(var.queues) : q.logging_sampling_ratio == null ? true : q.logging_sampling_ratio >= 0 && q.logging_sampling_ratio <= 1])
    error_message = "logging_sampling_ratio must be from 0 (log nothing) to 1 (log every dispatch); invalid in queues ${jsonencode([for id, q in var.queues : id if q.logging_sampling_ratio == null ? false : !(q.logging_sampling_ratio >= 0 && q.logging_sampling_ratio <= 1)])}."
  }
  validation {
    condition     = alltrue([for q in values(var.queues) : q.app_engine_routing_override == null ? true : anytrue([for v in values(q.app_engine_routing_override) : v != null])])
    error_message = "app_engine_routing_override must name at least one of service, version or instance (or be omitted); empty in queues ${jsonencode([for id, q in var.queues : id if q.app_engine_routing_override == null ? false : !anytrue([for v in values(q.app_engine_routing_override) : v != null])])}."
  }
}

variable "default_queue" {
  description = "Queue the library uses when defer() gets no _queue (CLOUDTASKS_DEFERRED_QUEUE); one of the keys of queues."
  type        = string
  default     = "default"

  validation {
    condition     = contains(keys(var.queues), var.default_queue)
    error_message = "default_queue \"${var.default_queue}\" is not one of the queues this module creates: ${jsonencode(keys(var.queues))}."
  }
}

variable "runtime_service_account_email" {
  description = "Service account the application runs as (Cloud Run service identity, or PROJECT_ID@appspot.gserviceaccount.com on App Engine). It may enqueue to the queues and attach the invoker's OIDC token to tasks."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]*@[a-z0-9][a-z0-9.:-]*\\.gserviceaccount\\.com$", var.runtime_service_account_email))
    error_message = "runtime_service_account_email must be a service account email (NAME@PROJECT_ID.iam.gserviceaccount.com or PROJECT_ID@appspot.gserviceaccount.com); got \"${var.runtime_service_account_email}\"."
  }
}

variable "invoker_service_account_email" {
  description = "Existing service account of project_id that Cloud Tasks signs OIDC tokens as (CLOUDTASKS_DEFERRED_SERVICE_ACCOUNT). Null: the module creates one, unless create_invoker_service_account is false."
  type        = string
  default     = null

  validation {
    condition     = var.invoker_service_account_email == null ? true : can(regex("^[a-z0-9][a-z0-9.-]*@[a-z0-9][a-z0-9.:-]*\\.gserviceaccount\\.com$", var.invoker_service_account_email))
    error_message = "invoker_service_account_email must be a service account email such as tasks-invoker@my-project.iam.gserviceaccount.com, or null to let the module create one."
  }
  validation {
    condition     = var.invoker_service_account_email == null || var.create_invoker_service_account
    error_message = "Set invoker_service_account_email (use an existing invoker) or create_invoker_service_account = false (no invoker), not both."
  }
}

variable "create_invoker_service_account" {
  description = "Create the invoker service account (named invoker_account_id) when invoker_service_account_email is null. Set to false, with no email, when every task targets App Engine: App Engine tasks are authenticated by App Engine's headers and need no invoker."
  type        = bool
  default     = true
}

variable "invoker_account_id" {
  description = "Account ID (the part before @) of the invoker service account the module creates."
  type        = string
  default     = "cloudtasks-deferred-invoker"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.invoker_account_id))
    error_message = "invoker_account_id must be 6 to 30 lowercase letters, digits and hyphens, starting with a letter; got \"${var.invoker_account_id}\"."
  }
}

variable "cloud_run_service_name" {
  description = "Name of the Cloud Run service that runs the tasks; the invoker gets roles/run.invoker on it. Null: no Cloud Run service (App Engine targets, or a service whose IAM is managed elsewhere)."
  type        = string
  default     = null

  validation {
    condition     = var.cloud_run_service_name == null ? true : can(regex("^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$", var.cloud_run_service_name))
    error_message = "cloud_run_service_name must be a Cloud Run service name: up to 49 lowercase letters, digits and hyphens, starting with a letter."
  }
  validation {
    condition     = var.cloud_run_service_name == null || var.invoker_service_account_email != null || var.create_invoker_service_account
    error_message = "A Cloud Run service needs an invoker to call it: keep create_invoker_service_account = true or set invoker_service_account_email."
  }
}

variable "cloud_run_location" {
  description = "Region of the Cloud Run service; null means location."
  type        = string
  default     = null

  validation {
    condition     = var.cloud_run_location == null ? true : can(regex("^[a-z][a-z0-9-]*[a-z0-9]$", var.cloud_run_location))
    error_message = "cloud_run_location must be a region such as \"us-central1\", or null for location."
  }
}

variable "cloud_run_url" {
  description = "https URL the tasks are sent to (CLOUDTASKS_DEFERRED_BASE_URL), usually the service's run.app URL; its origin becomes the OIDC audience (CLOUDTASKS_DEFERRED_AUDIENCE). Setting it also enables run.googleapis.com when enable_apis is true. Null: App Engine targets."
  type        = string
  default     = null

  validation {
    condition     = var.cloud_run_url == null ? true : can(regex("^https://[^/?#\\s]+(/[^?#\\s]*)?$", var.cloud_run_url))
    error_message = "cloud_run_url must be an https URL without ?query or #fragment, e.g. \"https://my-service-123456789.us-central1.run.app\"."
  }
  validation {
    condition     = var.cloud_run_url == null || var.invoker_service_account_email != null || var.create_invoker_service_account
    error_message = "HTTP targets carry the invoker's OIDC token: keep create_invoker_service_account = true or set invoker_service_account_email."
  }
}

variable "enable_apis" {
  description = "Enable cloudtasks.googleapis.com and iam.googleapis.com (and run.googleapis.com when cloud_run_url is set). They are never disabled on destroy. Set to false when the project's APIs are managed elsewhere."
  type        = bool
  default     = true
}
