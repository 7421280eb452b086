data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # Cloud Run's deterministic URL is known before the service exists, so the service's
  # own environment can name it without a dependency cycle.
  service_url = "https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app"
}

resource "google_service_account" "runtime" {
  account_id   = "${var.service_name}-runtime"
  display_name = "${var.service_name} runtime"
}

module "cloudtasks_deferred" {
  source = "../../modules/cloudtasks_deferred"

  project_id = var.project_id
  location   = var.region
  queues = {
    default = {}
    emails = {
      max_dispatches_per_second = 10
      max_attempts              = 5
      min_backoff               = "10s"
      max_retry_duration        = "3600s"
    }
  }
  runtime_service_account_email = google_service_account.runtime.email
  cloud_run_service_name        = google_cloud_run_v2_service.app.name
  cloud_run_url                 = local.service_url
}

resource "google_cloud_run_v2_service" "app" {
  name     = var.service_name
  location = var.region
  # Cloud Tasks of the same project reaches internal-only services on their run.app URL;
  # the internet cannot. Use INGRESS_TRAFFIC_ALL (still with IAM) if users call the app.
  ingress = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account = google_service_account.runtime.email

    containers {
      image = var.image

      dynamic "env" {
        for_each = module.cloudtasks_deferred.environment
        content {
          name  = env.key
          value = env.value
        }
      }
    }
  }
}
