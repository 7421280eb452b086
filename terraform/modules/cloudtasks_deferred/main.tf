locals {
  create_invoker = var.invoker_service_account_email == null && var.create_invoker_service_account
  has_invoker    = var.invoker_service_account_email != null || var.create_invoker_service_account
  invoker_email  = local.create_invoker ? google_service_account.invoker[0].email : var.invoker_service_account_email
  runtime_member = "serviceAccount:${var.runtime_service_account_email}"

  apis = var.enable_apis ? toset(concat(
    ["cloudtasks.googleapis.com", "iam.googleapis.com"],
    var.cloud_run_url == null ? [] : ["run.googleapis.com"],
  )) : toset([])
}

resource "google_project_service" "this" {
  for_each = local.apis

  project = var.project_id
  service = each.value
  # Other workloads of the project may rely on these APIs.
  disable_on_destroy = false
}

resource "google_service_account" "invoker" {
  count = local.create_invoker ? 1 : 0

  project      = var.project_id
  account_id   = var.invoker_account_id
  display_name = "cloudtasks_deferred task invoker"
  description  = "Identity of the OIDC tokens Cloud Tasks attaches to deferred tasks; the task handler accepts only this caller."

  depends_on = [google_project_service.this]
}

resource "google_cloud_tasks_queue" "this" {
  for_each = var.queues

  project  = var.project_id
  location = var.location
  name     = each.key

  rate_limits {
    max_dispatches_per_second = each.value.max_dispatches_per_second
    max_concurrent_dispatches = each.value.max_concurrent_dispatches
  }

  retry_config {
    max_attempts       = each.value.max_attempts
    min_backoff        = each.value.min_backoff
    max_backoff        = each.value.max_backoff
    max_doublings      = each.value.max_doublings
    max_retry_duration = each.value.max_retry_duration
  }

  dynamic "app_engine_routing_override" {
    for_each = each.value.app_engine_routing_override[*]
    content {
      service  = app_engine_routing_override.value.service
      version  = app_engine_routing_override.value.version
      instance = app_engine_routing_override.value.instance
    }
  }

  dynamic "stackdriver_logging_config" {
    for_each = each.value.logging_sampling_ratio[*]
    content {
      sampling_ratio = stackdriver_logging_config.value
    }
  }

  depends_on = [google_project_service.this]
}

# The application may create tasks in these queues and nothing more: the grant is on
# each queue, not on the project.
resource "google_cloud_tasks_queue_iam_member" "runtime_enqueuer" {
  for_each = google_cloud_tasks_queue.this

  project  = each.value.project
  location = each.value.location
  name     = each.value.name
  role     = "roles/cloudtasks.enqueuer"
  member   = local.runtime_member
}

# Creating a task whose oidc_token names the invoker requires iam.serviceAccounts.actAs
# on the invoker, granted on that one account.
resource "google_service_account_iam_member" "runtime_acts_as_invoker" {
  count = local.has_invoker ? 1 : 0

  service_account_id = "projects/${var.project_id}/serviceAccounts/${local.invoker_email}"
  role               = "roles/iam.serviceAccountUser"
  member             = local.runtime_member
}

# Cloud Tasks calls the service with the invoker's token; only the invoker may call it.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  count = var.cloud_run_service_name == null ? 0 : 1

  project  = var.project_id
  location = coalesce(var.cloud_run_location, var.location)
  name     = var.cloud_run_service_name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${local.invoker_email}"
}
